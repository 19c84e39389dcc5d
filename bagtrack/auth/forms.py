from flask import request
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length


class FormFieldsOnly(FlaskForm):
    class Meta:
        def wrap_formdata(self, form, formdata):
            # Form fields only: a file or a JSON body where a username belongs is no username at all.
            return request.form if request.method == "POST" else None


class LoginForm(FormFieldsOnly):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    next = HiddenField()


class CodeForm(FormFieldsOnly):
    code = StringField("Code", validators=[DataRequired(), Length(max=32)])


class PasswordForm(FormFieldsOnly):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=256)])
    new = PasswordField("New password", validators=[DataRequired(), Length(max=256)])
    repeated = PasswordField("New password again", validators=[DataRequired(), Length(max=256)])
