"""rocketmq-python-client 5.x (the official gRPC client) against apogee."""

import threading
import time

from rocketmq import (ClientConfiguration, ConsumeResult, Credentials, FilterExpression,
                      Message, MessageListener, Producer, PushConsumer, SimpleConsumer,
                      TransactionChecker, TransactionResolution)

from conftest import unique


def config(endpoint):
    return ClientConfiguration(endpoint, Credentials(), request_timeout=5)


def message(topic, body, tag="TagA"):
    m = Message()
    m.topic = topic
    m.body = body.encode()
    m.tag = tag
    m.keys = "key-" + body
    return m


def receive(consumer, n, invisible, timeout):
    """Receives until n distinct messages arrived or timeout seconds passed.

    This client receives queue by queue, each empty queue holding the call
    for the whole long poll, so with many queues a message can take a while
    to be reached; a message seen again (redelivered) is not counted twice.
    """
    got, seen = [], set()
    deadline = time.time() + timeout
    while len(got) < n and time.time() < deadline:
        for m in consumer.receive(16, invisible):
            if m.message_id not in seen:
                seen.add(m.message_id)
                got.append(m)
    return got


def started_producer(endpoint, topic, checker=None):
    p = Producer(config(endpoint), (topic,), checker)
    p.startup()
    return p


def started_simple(endpoint, group, topic, expr="*"):
    c = SimpleConsumer(config(endpoint), group, {topic: FilterExpression(expr)}, await_duration=2)
    c.startup()
    return c


def test_send_receive_ack(grpc_endpoint):
    topic, group = unique("PyNormal"), unique("PyGID")
    p = started_producer(grpc_endpoint, topic)
    c = started_simple(grpc_endpoint, group, topic)
    try:
        sent = {f"m{i}" for i in range(4)}
        for b in sorted(sent):
            assert p.send(message(topic, b)).message_id
        got = receive(c, 4, 30, 40)
        assert {m.body.decode() for m in got} == sent
        for m in got:
            assert m.topic == topic
            assert m.tag == "TagA"
            c.ack(m)
        assert c.receive(16, 30) == []
    finally:
        c.shutdown()
        p.shutdown()


def test_redelivery_after_invisible_time_and_change(grpc_endpoint):
    topic, group = unique("PyRedeliver"), unique("PyGID")
    p = started_producer(grpc_endpoint, topic)
    c = started_simple(grpc_endpoint, group, topic)
    try:
        p.send(message(topic, "again"))
        first = receive(c, 1, 2, 40)
        assert len(first) == 1
        second = receive(c, 1, 30, 30)
        assert [m.body.decode() for m in second] == ["again"]
        assert second[0].delivery_attempt == 2
        c.change_invisible_duration(second[0], 30)
        time.sleep(3)
        assert c.receive(16, 30) == []
    finally:
        c.shutdown()
        p.shutdown()


def test_fifo_and_tag_filter(grpc_endpoint):
    topic, group = unique("PyFifo"), unique("PyGID")
    p = started_producer(grpc_endpoint, topic)
    c = started_simple(grpc_endpoint, group, topic, "TagB")
    try:
        for i in range(5):
            m = message(topic, f"f{i}", "TagB")
            m.message_group = "order-1"
            p.send(m)
        p.send(message(topic, "other", "TagA"))
        got = receive(c, 5, 30, 40)
        assert [m.body.decode() for m in got] == [f"f{i}" for i in range(5)]
        for m in got:
            assert m.message_group == "order-1"
            c.ack(m)
    finally:
        c.shutdown()
        p.shutdown()


def test_delay(grpc_endpoint):
    topic, group = unique("PyDelay"), unique("PyGID")
    p = started_producer(grpc_endpoint, topic)
    c = started_simple(grpc_endpoint, group, topic)
    try:
        # This client takes the delivery time in whole seconds.
        at = int(time.time()) + 3
        m = message(topic, "late")
        m.delivery_timestamp = at
        p.send(m)
        got = receive(c, 1, 30, 40)
        assert [x.body.decode() for x in got] == ["late"]
        assert time.time() >= at - 0.1
        c.ack(got[0])
    finally:
        c.shutdown()
        p.shutdown()



def test_recall(grpc_endpoint):
    topic, group = unique("PyRecall"), unique("PyGID")
    p = started_producer(grpc_endpoint, topic)
    c = started_simple(grpc_endpoint, group, topic)
    try:
        at = int(time.time()) + 3
        receipts = {}
        for body in ("recalled", "kept"):
            m = message(topic, body)
            m.delivery_timestamp = at
            receipts[body] = p.send(m)
        handle = receipts["recalled"].recall_handle
        assert handle, "a delayed send answers a recall handle"
        try:
            p.recall_message(topic, "not-a-handle")
            raise AssertionError("a malformed handle was accepted")
        except AssertionError:
            raise
        except Exception as e:  # the client raises its own exception types
            assert "invalid" in str(e).lower(), e
        assert p.recall_message(topic, handle) == receipts["recalled"].message_id
        # Both are due together: only the kept one comes, also given time.
        got = receive(c, 2, 30, 12)
        assert [x.body.decode() for x in got] == ["kept"]
        c.ack(got[0])
    finally:
        c.shutdown()
        p.shutdown()

class Committing(TransactionChecker):
    def __init__(self):
        self.checked = []

    def check(self, message):
        self.checked.append(message.body.decode())
        return TransactionResolution.COMMIT


def test_transactions(grpc_endpoint):
    topic, group = unique("PyTx"), unique("PyGID")
    checker = Committing()
    p = started_producer(grpc_endpoint, topic, checker)
    c = started_simple(grpc_endpoint, group, topic)
    try:
        t1 = p.begin_transaction()
        p.send(message(topic, "commit"), t1)
        t1.commit()
        t2 = p.begin_transaction()
        p.send(message(topic, "rollback"), t2)
        t2.rollback()
        t3 = p.begin_transaction()
        p.send(message(topic, "checked"), t3)
        # t3 is left open: the broker checks back and the checker commits.
        got = receive(c, 2, 60, 60)
        assert sorted(m.body.decode() for m in got) == ["checked", "commit"]
        assert "checked" in checker.checked
        for m in got:
            c.ack(m)
    finally:
        c.shutdown()
        p.shutdown()


class Recording(MessageListener):
    def __init__(self):
        self.bodies = set()
        self.lock = threading.Lock()

    def consume(self, message):
        with self.lock:
            self.bodies.add(message.body.decode())
        return ConsumeResult.SUCCESS


def test_push_consumer(grpc_endpoint):
    topic, group = unique("PyPush"), unique("PyGID")
    listener = Recording()
    p = started_producer(grpc_endpoint, topic)
    c = PushConsumer(config(grpc_endpoint), group, listener, {topic: FilterExpression("*")})
    c.startup()
    try:
        for i in range(5):
            p.send(message(topic, f"p{i}"))
        deadline = time.time() + 30
        while time.time() < deadline and len(listener.bodies) < 5:
            time.sleep(0.2)
        assert listener.bodies == {f"p{i}" for i in range(5)}
    finally:
        c.shutdown()
        p.shutdown()
