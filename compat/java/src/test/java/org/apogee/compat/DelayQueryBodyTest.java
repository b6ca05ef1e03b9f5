package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ConcurrentHashMap;
import java.util.Map;

import org.apache.rocketmq.client.QueryResult;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.exception.MQBrokerException;
import org.apache.rocketmq.client.exception.MQClientException;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.junit.jupiter.api.Test;

/** Delayed delivery, query by key and id, body sizes. */
class DelayQueryBodyTest extends WithProducer {
    /** Consumes {@code topic} from the start; records arrival time (ms) per body. */
    static DefaultMQPushConsumer arrivals(String topic, Map<String, Long> at, Map<String, MessageExt> msgs)
        throws Exception {
        DefaultMQPushConsumer c = Support.pushConsumer(Support.unique("CID"));
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        c.registerMessageListener((MessageListenerConcurrently) (list, ctx) -> {
            for (MessageExt m : list) {
                String body = m.getBody().length > 64 ? "big-" + m.getBody().length
                    : new String(m.getBody(), StandardCharsets.UTF_8);
                at.putIfAbsent(body, System.currentTimeMillis());
                msgs.putIfAbsent(body, m);
            }
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        return c;
    }

    @Test
    void delayLevelDelaysDelivery() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("delay"), 2);
        Map<String, Long> at = new ConcurrentHashMap<>();
        Map<String, MessageExt> msgs = new ConcurrentHashMap<>();
        DefaultMQPushConsumer c = arrivals(topic, at, msgs);
        try {
            Message now = new Message(topic, "TagA", "now".getBytes(StandardCharsets.UTF_8));
            Message later = new Message(topic, "TagA", "later".getBytes(StandardCharsets.UTF_8));
            later.setDelayTimeLevel(2); // 5 s with the default messageDelayLevel
            long sentAt = System.currentTimeMillis();
            assertEquals(SendStatus.SEND_OK, producer.send(later).getSendStatus());
            assertEquals(SendStatus.SEND_OK, producer.send(now).getSendStatus());
            Support.await(Duration.ofSeconds(30), "both messages", () -> at.size() == 2);
            long delay = at.get("later") - sentAt;
            assertTrue(delay >= 4500, "level 2 waited only " + delay + " ms");
            assertTrue(delay < 15000, "level 2 waited " + delay + " ms");
            assertTrue(at.get("now") < at.get("later"));
            assertEquals(topic, msgs.get("later").getTopic());
        } finally {
            c.shutdown();
        }
    }

    @Test
    void deliverTimeMs() throws Exception {
        Method set;
        try {
            set = Message.class.getMethod("setDeliverTimeMs", long.class);
        } catch (NoSuchMethodException e) {
            assumeTrue(false, "this rocketmq-client has no Message.setDeliverTimeMs");
            return;
        }
        String topic = Support.createTopic(producer, Support.unique("timer"), 2);
        Map<String, Long> at = new ConcurrentHashMap<>();
        Map<String, MessageExt> msgs = new ConcurrentHashMap<>();
        DefaultMQPushConsumer c = arrivals(topic, at, msgs);
        try {
            Message m = new Message(topic, "TagA", "timed".getBytes(StandardCharsets.UTF_8));
            long due = System.currentTimeMillis() + 3000;
            set.invoke(m, due);
            assertEquals(SendStatus.SEND_OK, producer.send(m).getSendStatus());
            Support.await(Duration.ofSeconds(30), "the timed message", () -> at.containsKey("timed"));
            long early = due - at.get("timed");
            assertTrue(early <= 500, "delivered " + early + " ms before its time");
            assertTrue(at.get("timed") - due < 10000, "delivered late: " + (at.get("timed") - due) + " ms");
        } finally {
            c.shutdown();
        }
    }

    @Test
    void queryByKeyAndViewById() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("query"), 2);
        String key = Support.unique("order");
        long begin = System.currentTimeMillis() - 60_000;
        Message m = new Message(topic, "TagQ", key + " other-key", "find me".getBytes(StandardCharsets.UTF_8));
        SendResult r = producer.send(m);
        assertEquals(SendStatus.SEND_OK, r.getSendStatus());
        QueryResult[] q = new QueryResult[1];
        Support.await(Duration.ofSeconds(10), "query by key", () -> {
            try {
                q[0] = producer.queryMessage(topic, key, 32, begin, System.currentTimeMillis() + 60_000);
                return !q[0].getMessageList().isEmpty();
            } catch (Exception e) {
                return false;
            }
        });
        assertEquals(1, q[0].getMessageList().size());
        MessageExt byKey = q[0].getMessageList().get(0);
        assertEquals("find me", new String(byKey.getBody(), StandardCharsets.UTF_8));
        assertEquals("TagQ", byKey.getTags());
        assertEquals(r.getMsgId(), byKey.getMsgId());
        // viewMessage by the client (unique) id, and by the broker's offset id.
        MessageExt byId = producer.viewMessage(topic, r.getMsgId());
        assertNotNull(byId);
        assertEquals("find me", new String(byId.getBody(), StandardCharsets.UTF_8));
        MessageExt byOffsetId = producer.viewMessage(topic, r.getOffsetMsgId());
        assertEquals("find me", new String(byOffsetId.getBody(), StandardCharsets.UTF_8));
        assertEquals(r.getQueueOffset(), byOffsetId.getQueueOffset());
        // A key that was never sent finds nothing.
        QueryResult none = null;
        try {
            none = producer.queryMessage(topic, Support.unique("nokey"), 32, begin, System.currentTimeMillis());
        } catch (MQClientException e) {
            // Apache answers "query message by key finished, but no message" as an exception
            assertTrue(e.getMessage().contains("no message") || e.getResponseCode() == 17, e.getMessage());
        }
        if (none != null) {
            assertTrue(none.getMessageList().isEmpty());
        }
    }

    @Test
    void compressedBodyAndFourMiBBody() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("body"), 2);
        Map<String, Long> at = new ConcurrentHashMap<>();
        Map<String, MessageExt> msgs = new ConcurrentHashMap<>();
        // Over compressMsgBodyOverHowmuch (4 KiB): the client compresses it.
        byte[] text = new byte[64 * 1024];
        for (int i = 0; i < text.length; i++) {
            text[i] = (byte) ('a' + (i % 7));
        }
        assertTrue(text.length > producer.getCompressMsgBodyOverHowmuch());
        assertEquals(SendStatus.SEND_OK,
            producer.send(new Message(topic, "TagA", text)).getSendStatus());
        // Exactly 4 MiB of incompressible bytes, sent as they are.
        byte[] big = new byte[4 * 1024 * 1024];
        new Random(13).nextBytes(big);
        DefaultMQProducer raw = Support.fast(new DefaultMQProducer(Support.unique("PID_raw")));
        raw.setCompressMsgBodyOverHowmuch(Integer.MAX_VALUE);
        raw.setSendMsgTimeout(15000);
        raw.start();
        try {
            assertEquals(SendStatus.SEND_OK,
                raw.send(new Message(topic, "TagA", big)).getSendStatus());
        } finally {
            raw.shutdown();
        }
        DefaultMQPushConsumer c = arrivals(topic, at, msgs);
        try {
            Support.await(Duration.ofSeconds(30), "both bodies", () -> msgs.size() == 2);
        } finally {
            c.shutdown();
        }
        assertArrayEquals(text, msgs.get("big-" + text.length).getBody(), "compressed body comes back whole");
        assertArrayEquals(big, msgs.get("big-" + big.length).getBody(), "4 MiB body comes back whole");
    }

    @Test
    void bodyOverFourMiBIsRefused() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("toobig"), 2);
        byte[] tooBig = new byte[4 * 1024 * 1024 + 1];
        new Random(7).nextBytes(tooBig);
        // The client refuses it by default...
        MQClientException local = assertThrows(MQClientException.class,
            () -> producer.send(new Message(topic, "TagA", tooBig)));
        assertTrue(local.getMessage().contains("over max value"), local.getMessage());
        // ...and the broker does when a client lets it through.
        DefaultMQProducer lax = Support.fast(new DefaultMQProducer(Support.unique("PID_lax")));
        lax.setMaxMessageSize(8 * 1024 * 1024);
        lax.setCompressMsgBodyOverHowmuch(Integer.MAX_VALUE);
        lax.setRetryTimesWhenSendFailed(0);
        lax.setSendMsgTimeout(15000);
        lax.start();
        try {
            MQBrokerException refused = assertThrows(MQBrokerException.class,
                () -> lax.send(new Message(topic, "TagA", tooBig)));
            assertEquals(13, refused.getResponseCode(), "MESSAGE_ILLEGAL: " + refused.getErrorMessage());
            assertTrue(refused.getErrorMessage() != null && !refused.getErrorMessage().isBlank());
        } finally {
            lax.shutdown();
        }
    }
}
