from flask import request
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length


class LoginForm(FlaskForm):
    class Meta:
        def wrap_formdata(self, form, formdata):
            # Form fields only: a file or a JSON body where a username belongs is no username at all.
            return request.form if request.method == "POST" else None

    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    next = HiddenField()
