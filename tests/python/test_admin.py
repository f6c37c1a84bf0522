"""The internal listener: users, groups, live membership, history paging, health, metrics,
admin token."""

import re

import pytest
import requests


@pytest.fixture
def gw(module_gateway):
    return module_gateway


# ----- auth ----------------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("PUT", "/api/users/1", {"email": "x@example.test", "name": "X"}),
    ("GET", "/api/users/1", None),
    ("PUT", "/api/groups/1", {"name": "g", "members": [1]}),
    ("GET", "/api/groups/1", None),
    ("PUT", "/api/groups/1/members/2", None),
    ("DELETE", "/api/groups/1/members/2", None),
    ("GET", "/api/groups/1/messages", None),
]


@pytest.mark.parametrize("method,path,body", ADMIN_CALLS)
def test_admin_api_wrong_token_401(gw, method, path, body):
    assert gw.admin(method, path, body, token="wrong-token").status_code == 401


@pytest.mark.parametrize("method,path,body", ADMIN_CALLS)
def test_admin_api_missing_token_401(gw, method, path, body):
    r = requests.request(method, f"http://{gw.internal}{path}", json=body, timeout=10)
    assert r.status_code == 401, (r.status_code, r.text)


def test_rejected_admin_call_changes_nothing(gw, new_id):
    uid = new_id()
    gw.admin("PUT", f"/api/users/{uid}", {"email": "e@example.test", "name": "E"}, token="nope")
    assert gw.admin("GET", f"/api/users/{uid}").status_code == 404


# ----- users and groups --------------------------------------------------------------------------

def test_put_and_get_user(gw, new_id):
    uid = new_id()
    gw.put_user(uid, "ann@example.test", "Ann")
    body = gw.admin("GET", f"/api/users/{uid}").json()
    assert body == {"id": uid, "email": "ann@example.test", "name": "Ann", "online": False,
                    "lastSeen": None}, body
    gw.put_user(uid, "ann2@example.test", "Ann B")  # replace
    body = gw.admin("GET", f"/api/users/{uid}").json()
    assert (body["email"], body["name"]) == ("ann2@example.test", "Ann B"), body


def test_put_and_get_group(gw, new_id):
    gid, a, b, c = new_id(), new_id(), new_id(), new_id()
    gw.put_group(gid, [a, b], "first")
    body = gw.admin("GET", f"/api/groups/{gid}").json()
    # PUT /api/groups/<number> created the group named by that number's decimal string.
    assert body["id"] == str(gid) and body["name"] == "first" and sorted(body["members"]) == [a, b], body
    gw.put_group(gid, [b, c], "second")  # replace
    body = gw.admin("GET", f"/api/groups/{gid}").json()
    assert body["name"] == "second" and sorted(body["members"]) == [b, c], body


def test_unknown_user_and_group_404(gw, new_id):
    assert gw.admin("GET", f"/api/users/{new_id()}").status_code == 404
    assert gw.admin("GET", f"/api/groups/{new_id()}").status_code == 404


@pytest.mark.parametrize("path,body", [
    ("/api/users/{id}", None),
    ("/api/users/{id}", {"email": 5}),
    ("/api/groups/{id}", {"name": "g"}),
    ("/api/groups/{id}", {"name": "g", "members": ["a"]}),
    ("/api/users/not-a-number", {"email": "e@example.test", "name": "E"}),
])
def test_bad_admin_bodies_400(gw, new_id, path, body):
    r = gw.admin("PUT", path.format(id=new_id()), body)
    assert r.status_code in (400, 404, 422), (r.status_code, r.text)
    assert r.status_code != 200


def test_group_replace_changes_live_membership(gw, connect, make_group, new_id):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    gw.put_group(gid, [a], "without b")
    ack = cb.call("sendMessage", {"groupId": gid, "text": "am I in?", "attachments": []})
    assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack
    m1 = ca.send_message(gid, "b is gone")
    gw.put_group(gid, [a, b], "with b again")
    m2 = ca.send_message(gid, "b is back")
    cb.wait_for("newMessage", lambda m: m["id"] == m2["id"])
    assert m1["id"] not in [m["id"] for m in cb.events("newMessage")]


# ----- live membership -------------------------------------------------------------------------------

def test_added_member_receives_at_once(gw, connect, make_group, new_id):
    gid, (a,) = make_group(gw, 1)
    newcomer = new_id()
    gw.put_user(newcomer)
    ca, cn = connect(gw, a), connect(gw, newcomer)
    before = ca.send_message(gid, "before joining")
    gw.add_member(gid, newcomer)
    after = ca.send_message(gid, "after joining")  # no joinGroup: the open connection is in the room
    cn.wait_for("newMessage", lambda m: m["id"] == after["id"])
    assert [m["id"] for m in cn.events("newMessage")] == [after["id"]]
    assert before["id"] != after["id"]
    assert cn.send_message(gid, "newcomer speaks")["ok"] is True
    assert newcomer in gw.admin("GET", f"/api/groups/{gid}").json()["members"]


def test_added_member_on_several_tabs(gw, connect, make_group, new_id):
    gid, (a,) = make_group(gw, 1)
    newcomer = new_id()
    tabs = [connect(gw, newcomer) for _ in range(4)]
    gw.add_member(gid, newcomer)
    after = connect(gw, a).send_message(gid, "to every tab")
    for t in tabs:
        t.wait_for("newMessage", lambda m: m["id"] == after["id"])


def test_removed_member_stops_receiving_and_cannot_send(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca = connect(gw, a)
    tabs = [connect(gw, b) for _ in range(3)]
    gw.remove_member(gid, b)
    gone = ca.send_message(gid, "after removal")
    for t in tabs:
        ack = t.call("sendMessage", {"groupId": gid, "text": "still here?", "attachments": []})
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack
        ack = t.call("joinGroup", {"groupId": gid})
        assert ack["ok"] is False and ack["error"]["code"] == "not_member", ack
    # Marker: add back, then a later message arrives on every tab and the earlier one did not.
    gw.add_member(gid, b)
    back = ca.send_message(gid, "after re-adding")
    for t in tabs:
        t.wait_for("newMessage", lambda m: m["id"] == back["id"])
        assert gone["id"] not in [m["id"] for m in t.events("newMessage")]
    assert sorted(gw.admin("GET", f"/api/groups/{gid}").json()["members"]) == sorted([a, b])


# ----- history ---------------------------------------------------------------------------------------

def test_history_newest_first_with_paging(gw, connect, make_group):
    gid, (a,) = make_group(gw, 1)
    ca = connect(gw, a)
    ids = [ca.send_message(gid, f"h{i}")["id"] for i in range(7)]
    all_ = gw.history(gid, limit=50)
    assert [m["id"] for m in all_] == ids[::-1]
    assert [m["text"] for m in all_] == [f"h{i}" for i in range(6, -1, -1)]
    m = all_[0]
    assert set(m) >= {"id", "senderId", "groupId", "text", "attachments", "timestamp", "readBy"}, m
    page1 = gw.history(gid, limit=3)
    assert [m["id"] for m in page1] == ids[6:3:-1]
    page2 = gw.history(gid, limit=3, before=page1[-1]["id"])
    assert [m["id"] for m in page2] == ids[3:0:-1]
    page3 = gw.history(gid, limit=3, before=page2[-1]["id"])
    assert [m["id"] for m in page3] == ids[0:1]


def test_history_default_limit(gw, connect, make_group):
    gid, (a,) = make_group(gw, 1)
    connect(gw, a).send_message(gid, "one")
    assert len(gw.history(gid)) == 1


@pytest.mark.parametrize("query,status", [
    ("limit=0", 400), ("limit=501", 400), ("limit=-1", 400), ("limit=abc", 400),
    ("limit=1", 200), ("limit=500", 200),
    ("before=abc", 400), ("before=-5", 400), ("before=1.5", 400),
])
def test_history_parameters(gw, make_group, query, status):
    gid, _ = make_group(gw, 1)
    r = gw.admin("GET", f"/api/groups/{gid}/messages?{query}")
    assert r.status_code == status, (query, r.status_code, r.text)


# ----- health and metrics --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health(gw, path):
    assert gw.admin("GET", path).status_code == 200


def metric(text, name, labels=""):
    pat = re.compile(r"^" + re.escape(name + labels) + r"\s+([0-9.eE+-]+)$", re.M)
    found = pat.findall(text)
    assert found, f"metric {name}{labels} missing"
    return sum(float(v) for v in found)


def metric_sum(text, name):
    """Sum of all series of `name` (any labels)."""
    pat = re.compile(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+([0-9.eE+-]+)$", re.M)
    found = pat.findall(text)
    assert found, f"metric {name} missing"
    return sum(float(v) for _, v in found)


def test_metrics_exposes_the_contract(gw):
    r = gw.admin("GET", "/metrics")
    assert r.status_code == 200
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    text = r.text
    for name in ["corecast_connections", "corecast_messages_in_total", "corecast_deliveries_total",
                 "corecast_errors_total", "corecast_delivery_latency_seconds_bucket",
                 "corecast_delivery_latency_seconds_sum", "corecast_delivery_latency_seconds_count",
                 "corecast_shard_queue_depth", "corecast_store_latency_seconds_bucket",
                 "corecast_resident_memory_bytes"]:
        metric_sum(text, name)
    assert re.search(r'^corecast_errors_total\{code="invalid_payload"\}', text, re.M)
    assert metric_sum(text, "corecast_resident_memory_bytes") > 0


def test_metrics_count_traffic(gw, connect, make_group):
    gid, (a, b) = make_group(gw, 2)
    ca, cb = connect(gw, a), connect(gw, b)
    t0 = gw.admin("GET", "/metrics").text
    ack = ca.send_message(gid, "count me")
    cb.wait_for("newMessage", lambda m: m["id"] == ack["id"])
    ca.wait_for("newMessage", lambda m: m["id"] == ack["id"])
    bad = ca.call("sendMessage", {"groupId": gid, "text": "", "attachments": []})
    assert bad["ok"] is False
    t1 = gw.admin("GET", "/metrics").text
    assert metric_sum(t1, "corecast_connections") >= 2
    assert metric_sum(t1, "corecast_messages_in_total") >= metric_sum(t0, "corecast_messages_in_total") + 1
    assert metric_sum(t1, "corecast_deliveries_total") >= metric_sum(t0, "corecast_deliveries_total") + 2
    assert (metric(t1, "corecast_errors_total", '{code="invalid_payload"}')
            >= metric(t0, "corecast_errors_total", '{code="invalid_payload"}') + 1)
    assert (metric_sum(t1, "corecast_delivery_latency_seconds_count")
            > metric_sum(t0, "corecast_delivery_latency_seconds_count"))
    assert (metric_sum(t1, "corecast_store_latency_seconds_count")
            > metric_sum(t0, "corecast_store_latency_seconds_count"))
