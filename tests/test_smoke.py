from helpers import JSON


def test_parent_fills_to_complete(make_parent, make_user):
    parent = make_parent(children=30)
    assert parent.status == "complete"
    assert parent.child_count == 30


def test_child_scan_over_http(make_user, make_parent, login_as):
    worker = make_user()
    parent = make_parent()
    client = login_as(worker)
    response = client.post("/scan/child", data={"parent": parent.qr, "qr": "abc123\r\n"}, headers=JSON)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["ok"] is True and body["parent"]["child_count"] == 1
