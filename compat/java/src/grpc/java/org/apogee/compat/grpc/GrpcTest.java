package org.apogee.compat.grpc;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;

import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.ClientException;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apache.rocketmq.client.apis.producer.RecallReceipt;
import org.apache.rocketmq.client.apis.producer.SendReceipt;
import org.apache.rocketmq.client.apis.producer.Transaction;
import org.apache.rocketmq.client.apis.producer.TransactionResolution;
import org.apogee.compat.Support;
import org.junit.jupiter.api.Test;

/** rocketmq-client-java 5.x over gRPC against apogee standalone. */
class GrpcTest {

    @Test
    void producerStartsAndSendsNormalMessages() throws Exception {
        String topic = Grpc.topic("GrpcNormal", "NORMAL");
        try (Producer p = Grpc.producer(topic)) {
            for (int i = 0; i < 5; i++) {
                SendReceipt r = p.send(Grpc.message(topic, "TagA", "n" + i));
                assertNotNull(r.getMessageId());
            }
        }
    }

    @Test
    void simpleConsumerReceivesAndAcks() throws Exception {
        String topic = Grpc.topic("GrpcSimple", "NORMAL");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            Set<String> sent = new HashSet<>();
            for (int i = 0; i < 4; i++) {
                p.send(Grpc.message(topic, "TagA", "s" + i));
                sent.add("s" + i);
            }
            List<MessageView> got = Grpc.receive(c, 4, Duration.ofSeconds(30), Duration.ofSeconds(20));
            Set<String> bodies = new HashSet<>();
            for (MessageView mv : got) {
                bodies.add(Grpc.body(mv));
                assertEquals(topic, mv.getTopic());
                assertEquals("TagA", mv.getTag().orElse(null));
                assertEquals(1, mv.getDeliveryAttempt());
                c.ack(mv);
            }
            assertEquals(sent, bodies);
            // Acked: nothing comes back.
            assertTrue(c.receive(16, Duration.ofSeconds(30)).isEmpty());
        }
    }

    @Test
    void unackedMessageComesBackAfterInvisibleTime() throws Exception {
        String topic = Grpc.topic("GrpcRedeliver", "NORMAL");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            p.send(Grpc.message(topic, "TagA", "again"));
            List<MessageView> first = Grpc.receive(c, 1, Duration.ofSeconds(2), Duration.ofSeconds(20));
            assertEquals(1, first.size());
            List<MessageView> second = Grpc.receive(c, 1, Duration.ofSeconds(30), Duration.ofSeconds(30));
            assertEquals(1, second.size());
            assertEquals("again", Grpc.body(second.get(0)));
            assertEquals(2, second.get(0).getDeliveryAttempt());
            c.ack(second.get(0));
        }
    }

    @Test
    void changeInvisibleDurationThenAck() throws Exception {
        String topic = Grpc.topic("GrpcChange", "NORMAL");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            p.send(Grpc.message(topic, "TagA", "longer"));
            List<MessageView> got = Grpc.receive(c, 1, Duration.ofSeconds(2), Duration.ofSeconds(20));
            assertEquals(1, got.size());
            c.changeInvisibleDuration(got.get(0), Duration.ofSeconds(30));
            // Past the first invisible time the message stays hidden.
            Thread.sleep(4000);
            assertTrue(c.receive(16, Duration.ofSeconds(30)).isEmpty());
        }
    }

    @Test
    void tagFilter() throws Exception {
        String topic = Grpc.topic("GrpcTag", "NORMAL");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "TagB")) {
            p.send(Grpc.message(topic, "TagA", "a"));
            p.send(Grpc.message(topic, "TagB", "b"));
            p.send(Grpc.message(topic, "TagC", "c"));
            List<MessageView> got = Grpc.receive(c, 1, Duration.ofSeconds(30), Duration.ofSeconds(15));
            List<String> bodies = new ArrayList<>();
            for (MessageView mv : got) {
                bodies.add(Grpc.body(mv));
                c.ack(mv);
            }
            got = c.receive(16, Duration.ofSeconds(30));
            for (MessageView mv : got) {
                bodies.add(Grpc.body(mv));
            }
            assertEquals(List.of("b"), bodies);
        }
    }

    @Test
    void fifoMessagesKeepTheirGroupOrder() throws Exception {
        String topic = Grpc.topic("GrpcFifo", "FIFO");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            for (int i = 0; i < 6; i++) {
                Message m = Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                    .setMessageGroup("order-1").setBody(("f" + i).getBytes(StandardCharsets.UTF_8)).build();
                p.send(m);
            }
            List<MessageView> got = Grpc.receive(c, 6, Duration.ofSeconds(30), Duration.ofSeconds(20));
            List<String> bodies = new ArrayList<>();
            for (MessageView mv : got) {
                bodies.add(Grpc.body(mv));
                assertEquals("order-1", mv.getMessageGroup().orElse(null));
                c.ack(mv);
            }
            assertEquals(List.of("f0", "f1", "f2", "f3", "f4", "f5"), bodies);
        }
    }

    @Test
    void delayedMessageArrivesAfterItsTime() throws Exception {
        String topic = Grpc.topic("GrpcDelay", "DELAY");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            long at = System.currentTimeMillis() + 3000;
            Message m = Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                .setDeliveryTimestamp(at).setBody("late".getBytes(StandardCharsets.UTF_8)).build();
            p.send(m);
            List<MessageView> got = Grpc.receive(c, 1, Duration.ofSeconds(30), Duration.ofSeconds(20));
            long now = System.currentTimeMillis();
            assertEquals(1, got.size());
            assertEquals("late", Grpc.body(got.get(0)));
            assertTrue(now >= at - 100, "delivered " + (at - now) + " ms early");
            c.ack(got.get(0));
        }
    }

    @Test
    void recalledDelayedMessageIsNeverReceived() throws Exception {
        String topic = Grpc.topic("GrpcRecall", "DELAY");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic); SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            long at = System.currentTimeMillis() + 3000;
            SendReceipt gone = p.send(Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                .setDeliveryTimestamp(at).setBody("recalled".getBytes(StandardCharsets.UTF_8)).build());
            p.send(Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                .setDeliveryTimestamp(at).setBody("kept".getBytes(StandardCharsets.UTF_8)).build());
            assertNotNull(gone.getRecallHandle());
            assertFalse(gone.getRecallHandle().isEmpty(), "a delayed send answers a recall handle");
            assertThrows(ClientException.class, () -> p.recallMessage(topic, "not-a-handle"));
            RecallReceipt r = p.recallMessage(topic, gone.getRecallHandle());
            assertEquals(gone.getMessageId().toString(), r.getMessageId().toString());
            // Both are due together: only the kept one comes, also given time.
            List<MessageView> got = Grpc.receive(c, 2, Duration.ofSeconds(30), Duration.ofSeconds(10));
            assertEquals(1, got.size(), "received " + got.size());
            assertEquals("kept", Grpc.body(got.get(0)));
            c.ack(got.get(0));
        }
    }

    @Test
    void pushConsumerGetsEveryMessage() throws Exception {
        String topic = Grpc.topic("GrpcPush", "NORMAL");
        String group = Support.unique("GID");
        Set<String> got = ConcurrentHashMap.newKeySet();
        try (Producer p = Grpc.producer(topic);
             PushConsumer c = Grpc.PROVIDER.newPushConsumerBuilder()
                 .setClientConfiguration(Grpc.config())
                 .setConsumerGroup(group)
                 .setSubscriptionExpressions(Map.of(topic, new FilterExpression("*", FilterExpressionType.TAG)))
                 .setMessageListener(mv -> {
                     got.add(Grpc.body(mv));
                     return ConsumeResult.SUCCESS;
                 })
                 .build()) {
            for (int i = 0; i < 5; i++) {
                p.send(Grpc.message(topic, "T", "p" + i));
            }
            Support.await(Duration.ofSeconds(30), "5 messages pushed", () -> got.size() >= 5);
            assertEquals(Set.of("p0", "p1", "p2", "p3", "p4"), got);
        }
    }

    @Test
    void pushConsumerFailureIsRetried() throws Exception {
        String topic = Grpc.topic("GrpcPushRetry", "NORMAL");
        String group = Support.unique("GID");
        List<Integer> attempts = new CopyOnWriteArrayList<>();
        try (Producer p = Grpc.producer(topic);
             PushConsumer c = Grpc.PROVIDER.newPushConsumerBuilder()
                 .setClientConfiguration(Grpc.config())
                 .setConsumerGroup(group)
                 .setSubscriptionExpressions(Map.of(topic, new FilterExpression("*", FilterExpressionType.TAG)))
                 .setMessageListener(mv -> {
                     attempts.add(mv.getDeliveryAttempt());
                     return mv.getDeliveryAttempt() == 1 ? ConsumeResult.FAILURE : ConsumeResult.SUCCESS;
                 })
                 .build()) {
            p.send(Grpc.message(topic, "T", "retry-me"));
            Support.await(Duration.ofSeconds(40), "a second delivery", () -> attempts.contains(2));
            Thread.sleep(2000);
            assertEquals(List.of(1, 2), attempts);
        }
    }

    @Test
    void sqlFilter() throws Exception {
        String topic = Grpc.topic("GrpcSql", "NORMAL");
        String group = Support.unique("GID");
        try (Producer p = Grpc.producer(topic);
             SimpleConsumer c = Grpc.PROVIDER.newSimpleConsumerBuilder()
                 .setClientConfiguration(Grpc.config())
                 .setConsumerGroup(group)
                 .setAwaitDuration(Duration.ofSeconds(2))
                 .setSubscriptionExpressions(Map.of(topic, new FilterExpression("a > 5", FilterExpressionType.SQL92)))
                 .build()) {
            for (int i = 0; i < 10; i++) {
                p.send(Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T").addProperty("a", String.valueOf(i))
                    .setBody(("q" + i).getBytes(StandardCharsets.UTF_8)).build());
            }
            List<MessageView> got = Grpc.receive(c, 4, Duration.ofSeconds(30), Duration.ofSeconds(20));
            Set<String> bodies = new HashSet<>();
            for (MessageView mv : got) {
                bodies.add(Grpc.body(mv));
                c.ack(mv);
            }
            for (MessageView mv : c.receive(16, Duration.ofSeconds(30))) {
                bodies.add(Grpc.body(mv));
            }
            assertEquals(Set.of("q6", "q7", "q8", "q9"), bodies);
        }
    }

    @Test
    void transactionCommitIsDeliveredRollbackIsNot() throws Exception {
        String topic = Grpc.topic("GrpcTx", "TRANSACTION");
        String group = Support.unique("GID");
        try (Producer p = Grpc.PROVIDER.newProducerBuilder().setClientConfiguration(Grpc.config())
                 .setTopics(topic).setTransactionChecker(mv -> TransactionResolution.COMMIT).build();
             SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            Transaction t1 = p.beginTransaction();
            p.send(Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                .setBody("commit".getBytes(StandardCharsets.UTF_8)).build(), t1);
            t1.commit();
            Transaction t2 = p.beginTransaction();
            p.send(Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                .setBody("rollback".getBytes(StandardCharsets.UTF_8)).build(), t2);
            t2.rollback();
            List<MessageView> got = Grpc.receive(c, 1, Duration.ofSeconds(30), Duration.ofSeconds(15));
            List<String> bodies = new ArrayList<>();
            for (MessageView mv : got) {
                bodies.add(Grpc.body(mv));
                c.ack(mv);
            }
            for (MessageView mv : c.receive(16, Duration.ofSeconds(30))) {
                bodies.add(Grpc.body(mv));
            }
            assertEquals(List.of("commit"), bodies);
        }
    }

    @Test
    void undecidedTransactionIsResolvedByCheckBack() throws Exception {
        String topic = Grpc.topic("GrpcTxCheck", "TRANSACTION");
        String group = Support.unique("GID");
        List<String> checked = new CopyOnWriteArrayList<>();
        try (Producer p = Grpc.PROVIDER.newProducerBuilder().setClientConfiguration(Grpc.config())
                 .setTopics(topic).setTransactionChecker(mv -> {
                     checked.add(Grpc.body(mv));
                     return TransactionResolution.COMMIT;
                 }).build();
             SimpleConsumer c = Grpc.simpleConsumer(group, topic, "*")) {
            Transaction t = p.beginTransaction();
            p.send(Grpc.PROVIDER.newMessageBuilder().setTopic(topic).setTag("T")
                .setBody("checked".getBytes(StandardCharsets.UTF_8)).build(), t);
            // Neither commit nor rollback: the broker asks the producer.
            List<MessageView> got = Grpc.receive(c, 1, Duration.ofSeconds(30), Duration.ofSeconds(40));
            assertEquals(1, got.size());
            assertEquals("checked", Grpc.body(got.get(0)));
            assertFalse(checked.isEmpty());
            c.ack(got.get(0));
        }
    }
}
