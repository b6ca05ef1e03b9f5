package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashSet;
import java.util.Set;
import java.util.concurrent.TimeUnit;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.junit.jupiter.api.Test;

/** Push consumers: clustering, broadcasting, rebalance, tag filters, resuming a group. */
class PushConsumerTest extends WithProducer {
    static Set<String> send(String topic, String prefix, int n, String tag) throws Exception {
        Set<String> bodies = new HashSet<>();
        for (int i = 0; i < n; i++) {
            String body = prefix + i;
            assertEquals(SendStatus.SEND_OK,
                producer.send(new Message(topic, tag, body.getBytes(StandardCharsets.UTF_8))).getSendStatus());
            bodies.add(body);
        }
        return bodies;
    }

    static DefaultMQPushConsumer consumer(String group, String topic, String expr, Collector col,
        String model) throws Exception {
        DefaultMQPushConsumer c = Support.pushConsumer(group);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        Support.setMessageModel(c, model);
        c.subscribe(topic, expr);
        c.registerMessageListener(col);
        c.start();
        return c;
    }

    /** Queues currently assigned to a push consumer by its rebalance. */
    static int assigned(DefaultMQPushConsumer c, String topic) {
        return (int) c.getDefaultMQPushConsumerImpl().getRebalanceImpl().getProcessQueueTable().keySet().stream()
            .filter(mq -> mq.getTopic().equals(topic)).count();
    }

    @Test
    void clusteringSharesQueuesAndEachMessageOnce() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("cluster"), 4);
        String group = Support.unique("CID_cluster");
        Collector a = new Collector();
        Collector b = new Collector();
        DefaultMQPushConsumer ca = consumer(group, topic, "*", a, "CLUSTERING");
        DefaultMQPushConsumer cb = consumer(group, topic, "*", b, "CLUSTERING");
        try {
            Support.await(Duration.ofSeconds(20), "2 + 2 queues",
                () -> assigned(ca, topic) == 2 && assigned(cb, topic) == 2);
            Set<String> sent = send(topic, "c", 40, "TagA");
            Support.await(Duration.ofSeconds(30), "40 messages",
                () -> a.received.size() + b.received.size() >= 40);
            TimeUnit.MILLISECONDS.sleep(500);
            Set<String> got = new HashSet<>(a.bodies());
            got.addAll(b.bodies());
            assertEquals(sent, got);
            assertEquals(40, a.received.size() + b.received.size(), "no message twice");
            assertFalse(a.received.isEmpty());
            assertFalse(b.received.isEmpty());
        } finally {
            ca.shutdown();
            cb.shutdown();
        }
    }

    @Test
    void broadcastingGivesEveryConsumerEveryMessage() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("bcast"), 4);
        String group = Support.unique("CID_bcast");
        Collector a = new Collector();
        Collector b = new Collector();
        DefaultMQPushConsumer ca = consumer(group, topic, "*", a, "BROADCASTING");
        DefaultMQPushConsumer cb = consumer(group, topic, "*", b, "BROADCASTING");
        try {
            Support.await(Duration.ofSeconds(20), "4 queues each",
                () -> assigned(ca, topic) == 4 && assigned(cb, topic) == 4);
            Set<String> sent = send(topic, "b", 20, "TagA");
            a.awaitCount(20, Duration.ofSeconds(30));
            b.awaitCount(20, Duration.ofSeconds(30));
            assertEquals(sent, new HashSet<>(a.bodies()));
            assertEquals(sent, new HashSet<>(b.bodies()));
        } finally {
            ca.shutdown();
            cb.shutdown();
        }
    }

    @Test
    void rebalanceWhenASecondConsumerJoinsAndLeaves() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("rebal"), 4);
        String group = Support.unique("CID_rebal");
        Collector a = new Collector();
        Collector b = new Collector();
        DefaultMQPushConsumer ca = consumer(group, topic, "*", a, "CLUSTERING");
        try {
            Support.await(Duration.ofSeconds(20), "first consumer owns 4 queues", () -> assigned(ca, topic) == 4);
            DefaultMQPushConsumer cb = consumer(group, topic, "*", b, "CLUSTERING");
            try {
                Support.await(Duration.ofSeconds(20), "2 + 2 queues after the join",
                    () -> assigned(ca, topic) == 2 && assigned(cb, topic) == 2);
            } finally {
                cb.shutdown();
            }
            Support.await(Duration.ofSeconds(20), "first consumer owns 4 queues after the leave",
                () -> assigned(ca, topic) == 4);
            Set<String> sent = send(topic, "r", 20, "TagA");
            a.awaitCount(20, Duration.ofSeconds(30));
            assertEquals(sent, new HashSet<>(a.bodies()));
        } finally {
            ca.shutdown();
        }
    }

    @Test
    void tagFilterWithOr() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("tags"), 4);
        Set<String> wanted = send(topic, "A", 10, "TagA");
        send(topic, "C", 10, "TagC");
        wanted.addAll(send(topic, "B", 10, "TagB"));
        Collector col = new Collector();
        DefaultMQPushConsumer c = consumer(Support.unique("CID_tags"), topic, "TagA || TagB", col,
            "CLUSTERING");
        try {
            col.awaitCount(20, Duration.ofSeconds(30));
            TimeUnit.SECONDS.sleep(1);
        } finally {
            c.shutdown();
        }
        assertEquals(wanted, new HashSet<>(col.bodies()));
        assertEquals(20, col.received.size());
        for (MessageExt m : col.received) {
            assertTrue(m.getTags().equals("TagA") || m.getTags().equals("TagB"), m.getTags());
        }
    }

    @Test
    void restartedGroupResumesFromCommittedOffsets() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("resume"), 4);
        String group = Support.unique("CID_resume");
        Set<String> first = send(topic, "first-", 12, "TagA");
        Collector a = new Collector();
        DefaultMQPushConsumer ca = consumer(group, topic, "*", a, "CLUSTERING");
        try {
            a.awaitCount(12, Duration.ofSeconds(30));
        } finally {
            ca.shutdown(); // persists the offsets
        }
        assertEquals(first, new HashSet<>(a.bodies()));
        Set<String> second = send(topic, "second-", 12, "TagA");
        Collector b = new Collector();
        DefaultMQPushConsumer cb = consumer(group, topic, "*", b, "CLUSTERING");
        try {
            b.awaitCount(12, Duration.ofSeconds(30));
            TimeUnit.SECONDS.sleep(1);
        } finally {
            cb.shutdown();
        }
        assertEquals(second, new HashSet<>(b.bodies()), "only the messages sent after the restart");
        assertEquals(12, b.received.size());
    }
}
