package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.impl.MQClientAPIImpl;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageConst;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.common.message.MessageRequestMode;
import org.apache.rocketmq.remoting.protocol.route.BrokerData;
import org.apache.rocketmq.remoting.protocol.route.TopicRouteData;
import org.junit.jupiter.api.Test;

/**
 * POP consumption through the 5.x remoting client: the group is switched to
 * POP for the topic on every broker (SET_MESSAGE_REQUEST_MODE, what mqadmin
 * setConsumeMode sends), and a push consumer that leaves rebalancing to the
 * broker (QUERY_ASSIGNMENT) then pops, acks and changes invisible time.
 * Compiled for 5.x clients only (4.9.8 has no POP).
 */
class PopConsumeTest extends WithProducer {
    private static MQClientAPIImpl api() {
        return producer.getDefaultMQProducerImpl().getMqClientFactory().getMQClientAPIImpl();
    }

    /** Makes {@code group} POP {@code topic} on every broker serving it. */
    private static void usePop(String topic, String group) throws Exception {
        TopicRouteData route = api().getTopicRouteInfoFromNameServer(topic, 5000);
        assertTrue(!route.getBrokerDatas().isEmpty(), "route of " + topic);
        for (BrokerData b : route.getBrokerDatas()) {
            api().setMessageRequestMode(b.selectBrokerAddr(), topic, group, MessageRequestMode.POP, 0, 5000);
        }
    }

    private static DefaultMQPushConsumer popConsumer(String group, String topic,
        MessageListenerConcurrently listener) throws Exception {
        DefaultMQPushConsumer c = Support.pushConsumer(group);
        c.setClientRebalance(false);
        c.setPopInvisibleTime(5000);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        c.registerMessageListener(listener);
        c.start();
        return c;
    }

    private static Set<String> send(String topic, int n) throws Exception {
        Set<String> sent = new HashSet<>();
        for (int i = 0; i < n; i++) {
            String body = "pop-" + i;
            assertEquals(SendStatus.SEND_OK,
                producer.send(new Message(topic, body.getBytes(StandardCharsets.UTF_8))).getSendStatus());
            sent.add(body);
        }
        return sent;
    }

    @Test
    void everyMessageIsPoppedAndAckedOnce() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("pop"), 4);
        String group = Support.unique("CID_pop");
        usePop(topic, group);
        Set<String> sent = send(topic, 40);
        Collector col = new Collector();
        DefaultMQPushConsumer c = popConsumer(group, topic, col);
        try {
            col.awaitCount(40, Duration.ofSeconds(60));
            for (MessageExt m : col.received) {
                // The receipt handle the broker issued: proof the message was popped, not pulled.
                assertNotNull(m.getProperty(MessageConst.PROPERTY_POP_CK), "no POP_CK on " + m.getMsgId());
            }
            assertEquals(sent, new HashSet<>(col.bodies()));
            // Acked: nothing comes back after the 5 s invisible time.
            Thread.sleep(9000);
            assertEquals(40, col.received.size(), "redelivered after ack: " + col.bodies());
        } finally {
            c.shutdown();
        }
    }

    @Test
    void aFailedMessageComesBackAndIsAckedTheSecondTime() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("popretry"), 2);
        String group = Support.unique("CID_popretry");
        usePop(topic, group);
        Set<String> sent = send(topic, 6);
        Map<String, AtomicInteger> seen = new ConcurrentHashMap<>();
        MessageListenerConcurrently failFirst = (List<MessageExt> msgs, org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyContext ctx) -> {
            boolean fail = false;
            for (MessageExt m : msgs) {
                String body = new String(m.getBody(), StandardCharsets.UTF_8);
                if (seen.computeIfAbsent(body, k -> new AtomicInteger()).incrementAndGet() == 1 && body.equals("pop-3")) {
                    fail = true;
                }
            }
            return fail ? ConsumeConcurrentlyStatus.RECONSUME_LATER : ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        };
        DefaultMQPushConsumer c = popConsumer(group, topic, failFirst);
        try {
            Support.await(Duration.ofSeconds(90), "pop-3 delivered twice, all others once",
                () -> seen.keySet().equals(sent) && seen.get("pop-3").get() >= 2);
            // After its second, successful delivery it stays acked.
            Thread.sleep(7000);
            assertEquals(2, seen.get("pop-3").get(), "pop-3 deliveries");
            for (String b : sent) {
                if (!b.equals("pop-3")) {
                    // A batch holding pop-3 is failed as a whole: its batch-mates may come twice.
                    assertTrue(seen.get(b).get() <= 2, b + " delivered " + seen.get(b).get() + " times");
                }
            }
        } finally {
            c.shutdown();
        }
    }
}
