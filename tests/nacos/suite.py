"""The Nacos client suite: the unpatched PyPI client (nacos-sdk-python 2.0.x, nacos.NacosClient,
which speaks the Nacos 1.x Open API) against a live 3-node dister cluster with auth on.

Run by tests/t46_http.rs (nacos_python_client_suite), which starts the cluster and passes:
  DISTER_NACOS_SERVERS  the three nodes' HTTP addresses, comma-separated
  DISTER_NACOS_USER, DISTER_NACOS_PASS  the cluster's credentials
  DISTER_NACOS_REMOVE_MS  how long an ephemeral instance may go without beats before removal
Only the client's public methods are called. Exits non-zero, saying what failed, on any failure.
"""

import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time

import nacos
from nacos.exception import NacosException

SERVERS = os.environ["DISTER_NACOS_SERVERS"].split(",")
USER = os.environ["DISTER_NACOS_USER"]
PASS = os.environ["DISTER_NACOS_PASS"]
REMOVE_S = int(os.environ["DISTER_NACOS_REMOVE_MS"]) / 1000.0
LOGS = tempfile.mkdtemp(prefix="nacos-client-logs-")


def client(server, namespace=None, username=USER, password=PASS):
    c = nacos.NacosClient(server, namespace=namespace, username=username, password=password, logDir=LOGS)
    # Read from the server only: a snapshot on disk must not hide a failed read.
    c.set_options(no_snapshot=True)
    return c


def eventually(what, check, within=10.0):
    deadline = time.time() + within
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except NacosException as e:
            last = e
        time.sleep(0.1)
    raise AssertionError("%s: not within %.1fs (last: %r)" % (what, within, last))


def hosts(c, service, **kw):
    return c.list_naming_instance(service, **kw)["hosts"]


def step(name):
    print("--", name, flush=True)


def test_auth():
    step("auth: no credentials and a wrong password are refused; the right ones log in")
    for anonymous in (nacos.NacosClient(SERVERS[0], logDir=LOGS),):
        anonymous.set_options(no_snapshot=True)
        try:
            anonymous.publish_config("auth-probe", "DEFAULT_GROUP", "x")
            raise AssertionError("a client without a token could publish")
        except NacosException as e:
            assert "privilege" in str(e), e
    try:
        client(SERVERS[0], password="not-the-password").get_config("auth-probe", "DEFAULT_GROUP")
        raise AssertionError("a wrong password logged in")
    except Exception as e:  # the client raises urllib's HTTPError from its login
        assert "403" in str(e) or "Forbidden" in str(e), repr(e)
    c = client(SERVERS[2])
    c.get_access_token(force_refresh=True)
    assert c.token and c.token_ttl > 0, (c.token, c.token_ttl)


def test_instances(c1, c2):
    step("instances: register on one node, list and get on another, modify, deregister")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    probe.listen(16)
    port = probe.getsockname()[1]
    assert c1.add_naming_instance("orders", "127.0.0.1", port, cluster_name="c1", weight=2.5,
                                  metadata={"version": "1"}, ephemeral=False)
    got = eventually("persistent instance healthy by its TCP check",
                     lambda: [h for h in hosts(c2, "orders") if h["port"] == port and h["healthy"]])
    h = got[0]
    assert (h["ip"], h["weight"], h["clusterName"], h["metadata"], h["ephemeral"], h["enabled"]) == \
        ("127.0.0.1", 2.5, "c1", {"version": "1"}, False, True), h
    assert h["instanceId"] == "127.0.0.1#%d#c1#DEFAULT_GROUP@@orders" % port, h
    assert h["serviceName"] == "DEFAULT_GROUP@@orders", h
    listed = c2.list_naming_instance("orders")
    for field in ("name", "clusters", "cacheMillis", "lastRefTime", "checksum", "hosts"):
        assert field in listed, (field, listed)
    assert hosts(c2, "orders", clusters="c1") and not hosts(c2, "orders", clusters="other")

    detail = c2.get_naming_instance("orders", "127.0.0.1", port, cluster_name="c1")
    assert (detail["ip"], detail["port"], detail["weight"]) == ("127.0.0.1", port, 2.5), detail

    assert c1.modify_naming_instance("orders", "127.0.0.1", port, cluster_name="c1", weight=7,
                                     metadata={"version": "2"}, ephemeral=False)
    h = eventually("modified instance listed healthy",
                   lambda: [h for h in hosts(c2, "orders") if h["healthy"] and h["weight"] == 7])[0]
    assert h["metadata"] == {"version": "2"}, h
    assert c1.modify_naming_instance("orders", "127.0.0.1", port, cluster_name="c1", enable=False, ephemeral=False)
    assert hosts(c2, "orders") == [], "a disabled instance is not listed"

    # A second, healthy instance: with none healthy, Nacos' protect threshold (0 by default)
    # would list the closed one as healthy.
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(16)
    other_port = other.getsockname()[1]
    assert c1.add_naming_instance("orders", "127.0.0.1", other_port, cluster_name="c1", ephemeral=False)
    probe.close()
    assert c1.modify_naming_instance("orders", "127.0.0.1", port, cluster_name="c1", enable=True, ephemeral=False)
    eventually("an instance whose port closed turns unhealthy",
               lambda: [h for h in hosts(c2, "orders") if h["port"] == port and not h["healthy"]])
    eventually("the other one is healthy",
               lambda: [h for h in hosts(c2, "orders") if h["port"] == other_port and h["healthy"]])
    assert [h["port"] for h in hosts(c2, "orders", healthy_only=True)] == [other_port]

    other.close()
    eventually("with none healthy, protection lists both as healthy",
               lambda: c2.list_naming_instance("orders", healthy_only=True).get("reachProtectionThreshold")
               and sorted(h["port"] for h in hosts(c2, "orders", healthy_only=True)) == sorted([port, other_port]))
    assert c1.remove_naming_instance("orders", "127.0.0.1", port, cluster_name="c1", ephemeral=False)
    assert c1.remove_naming_instance("orders", "127.0.0.1", other_port, cluster_name="c1", ephemeral=False)
    assert hosts(c2, "orders") == []
    assert hosts(c2, "never-registered") == []


def test_beats(c1, c2):
    step("beats: an ephemeral instance lives by its beats and goes when they stop")
    assert c1.add_naming_instance("cart", "127.0.0.1", 9001, group_name="shop", metadata={"zone": "a"})
    listed = hosts(c2, "cart", group_name="shop")
    assert [h["ephemeral"] for h in listed] == [True], listed
    answer = c2.send_heartbeat("cart", "127.0.0.1", 9001, group_name="shop")
    assert answer["code"] == 10200 and answer["clientBeatInterval"] > 0, answer
    # A beat for an instance the cluster does not know (removed while its beats could not
    # arrive) registers it again from the beat, as Nacos does: this client never re-registers.
    revived = c2.send_heartbeat("cart", "127.0.0.1", 9999, group_name="shop", metadata={"zone": "b"})
    assert revived["code"] == 10200, revived
    back = [h for h in hosts(c2, "cart", group_name="shop") if h["port"] == 9999]
    assert back and back[0]["metadata"] == {"zone": "b"} and back[0]["ephemeral"], back

    # Beat for twice the removal time (9001 only): it stays, healthy; 9999 goes.
    until = time.time() + 2 * REMOVE_S
    while time.time() < until:
        c1.send_heartbeat("cart", "127.0.0.1", 9001, group_name="shop")
        time.sleep(REMOVE_S / 6)
    listed = hosts(c2, "cart", group_name="shop")
    assert [(h["port"], h["healthy"]) for h in listed] == [(9001, True)], ("beating instance kept", listed)
    # Stop beating: it disappears.
    eventually("silent ephemeral instance removed", lambda: hosts(c2, "cart", group_name="shop") == [],
               within=3 * REMOVE_S + 5)

    # The client's own beat thread keeps one alive too, until it is deregistered.
    assert c1.add_naming_instance("cart", "127.0.0.1", 9002, group_name="shop", heartbeat_interval=REMOVE_S / 6)
    time.sleep(2 * REMOVE_S)
    assert [h["port"] for h in hosts(c2, "cart", group_name="shop")] == [9002]
    assert c1.remove_naming_instance("cart", "127.0.0.1", 9002, group_name="shop")
    assert hosts(c2, "cart", group_name="shop") == []


def test_configs(c1, c2, c3):
    step("configs: publish, get on another node, remove; namespaces keep data apart")
    assert c1.get_config("app.yaml", "DEFAULT_GROUP") is None
    assert c1.publish_config("app.yaml", "DEFAULT_GROUP", "port: 80\nname: ünïcode", config_type="yaml")
    assert c2.get_config("app.yaml", "DEFAULT_GROUP") == "port: 80\nname: ünïcode"
    assert c3.get_config("app.yaml", "DEFAULT_GROUP") is None, "another namespace does not see it"
    assert c3.publish_config("app.yaml", "DEFAULT_GROUP", "dev")
    assert c2.get_config("app.yaml", "DEFAULT_GROUP") == "port: 80\nname: ünïcode"
    assert c3.get_config("app.yaml", "DEFAULT_GROUP") == "dev"
    assert c2.remove_config("app.yaml", "DEFAULT_GROUP")
    assert c1.get_config("app.yaml", "DEFAULT_GROUP") is None
    assert c3.get_config("app.yaml", "DEFAULT_GROUP") == "dev"


def test_watch(c1, c2):
    step("watch: a listener on one node fires for a change published on another")
    seen = []
    fired = threading.Event()

    def on_change(args):
        seen.append(args)
        fired.set()

    c1.publish_config("feature.flags", "web", "a=1")
    c1.add_config_watcher("feature.flags", "web", on_change)
    time.sleep(0.5)  # the long poll is waiting
    assert not fired.is_set(), ("no change yet", seen)
    started = time.time()
    assert c2.publish_config("feature.flags", "web", "a=2")
    assert fired.wait(10), "the watcher did not fire"
    took = time.time() - started
    assert seen[-1]["content"] == "a=2" and seen[-1]["data_id"] == "feature.flags", seen
    print("   watcher fired %.0f ms after the publish on another node" % (took * 1000), flush=True)
    c1.remove_config_watcher("feature.flags", "web", on_change)


def main():
    test_auth()
    c1, c2 = client(SERVERS[0]), client(SERVERS[1])
    c3 = client(SERVERS[2], namespace="dev")
    test_instances(c1, c2)
    test_beats(c1, c2)
    test_configs(c1, c2, c3)
    test_watch(c1, c2)
    print("nacos client suite: all passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e, file=sys.stderr, flush=True)
        sys.exit(1)
    # The client's watcher threads are daemons; its multiprocessing manager is a process of
    # its own, ended here so that nothing outlives the suite.
    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(0)
