package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.MessageListenerOrderly;
import org.apache.rocketmq.client.consumer.listener.ConsumeOrderlyStatus;
import org.apache.rocketmq.client.producer.SendCallback;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.junit.jupiter.api.Test;

/** Sync, async, oneway, batch and ordered sends, each consumed back. */
class SendTest extends WithProducer {
    private static Message msg(String topic, String body) {
        return new Message(topic, "TagA", body, body.getBytes(StandardCharsets.UTF_8));
    }

    /** Consumes {@code topic} from the start in a fresh group until {@code n} messages arrived. */
    static Collector consumeAll(String topic, int n) throws Exception {
        DefaultMQPushConsumer c = Support.pushConsumer(Support.unique("CID"));
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        Collector col = new Collector();
        c.registerMessageListener(col);
        c.start();
        try {
            col.awaitCount(n, Duration.ofSeconds(30));
            TimeUnit.MILLISECONDS.sleep(300);
        } finally {
            c.shutdown();
        }
        return col;
    }

    @Test
    void syncSend() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("sync"), 4);
        Set<String> sent = new HashSet<>();
        Set<String> ids = new HashSet<>();
        for (int i = 0; i < 10; i++) {
            SendResult r = producer.send(msg(topic, "sync-" + i));
            assertEquals(SendStatus.SEND_OK, r.getSendStatus());
            assertNotNull(r.getMsgId());
            assertNotNull(r.getOffsetMsgId());
            assertEquals(topic, r.getMessageQueue().getTopic());
            assertTrue(r.getQueueOffset() >= 0);
            ids.add(r.getMsgId());
            sent.add("sync-" + i);
        }
        assertEquals(10, ids.size(), "message ids are unique");
        Collector col = consumeAll(topic, 10);
        assertEquals(sent, new HashSet<>(col.bodies()));
        assertEquals(10, col.received.size());
        for (MessageExt m : col.received) {
            assertTrue(ids.contains(m.getMsgId()), "consumed id " + m.getMsgId() + " was returned by send");
            assertEquals("TagA", m.getTags());
        }
    }

    @Test
    void asyncSend() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("async"), 4);
        CountDownLatch done = new CountDownLatch(10);
        ConcurrentLinkedQueue<Object> results = new ConcurrentLinkedQueue<>();
        for (int i = 0; i < 10; i++) {
            producer.send(msg(topic, "async-" + i), new SendCallback() {
                @Override
                public void onSuccess(SendResult r) {
                    results.add(r.getSendStatus());
                    done.countDown();
                }

                @Override
                public void onException(Throwable e) {
                    results.add(e);
                    done.countDown();
                }
            });
        }
        assertTrue(done.await(15, TimeUnit.SECONDS), "all callbacks ran");
        for (Object r : results) {
            assertEquals(SendStatus.SEND_OK, r);
        }
        assertEquals(10, consumeAll(topic, 10).received.size());
    }

    @Test
    void onewaySend() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("oneway"), 4);
        Set<String> sent = new HashSet<>();
        for (int i = 0; i < 10; i++) {
            producer.sendOneway(msg(topic, "oneway-" + i));
            sent.add("oneway-" + i);
        }
        assertEquals(sent, new HashSet<>(consumeAll(topic, 10).bodies()));
    }

    @Test
    void batchSend() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("batch"), 4);
        List<Message> batch = new ArrayList<>();
        Set<String> sent = new HashSet<>();
        for (int i = 0; i < 16; i++) {
            Message m = msg(topic, "batch-" + i);
            m.setKeys("bk-" + i);
            batch.add(m);
            sent.add("batch-" + i);
        }
        SendResult r = producer.send(batch);
        assertEquals(SendStatus.SEND_OK, r.getSendStatus());
        assertEquals(16, r.getMsgId().split(",").length, "one id per message: " + r.getMsgId());
        Collector col = consumeAll(topic, 16);
        assertEquals(sent, new HashSet<>(col.bodies()));
        // A batch goes to one queue, at consecutive offsets.
        Set<Integer> queues = new HashSet<>();
        List<Long> offsets = new ArrayList<>();
        for (MessageExt m : col.received) {
            queues.add(m.getQueueId());
            offsets.add(m.getQueueOffset());
            assertTrue(m.getKeys().startsWith("bk-"), m.getKeys());
        }
        assertEquals(1, queues.size());
        offsets.sort(Long::compare);
        for (int i = 1; i < offsets.size(); i++) {
            assertEquals(offsets.get(i - 1) + 1, offsets.get(i));
        }
    }

    @Test
    void orderedSendAndOrderlyConsume() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("order"), 4);
        int orders = 4;
        int perOrder = 15;
        for (int i = 0; i < perOrder; i++) {
            for (int o = 0; o < orders; o++) {
                SendResult r = producer.send(msg(topic, o + ":" + i),
                    (mqs, m, arg) -> mqs.get((Integer) arg % mqs.size()), o);
                assertEquals(SendStatus.SEND_OK, r.getSendStatus());
                assertEquals(o, r.getMessageQueue().getQueueId());
            }
        }
        DefaultMQPushConsumer c = Support.pushConsumer(Support.unique("CID_order"));
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        List<String> seen = new java.util.concurrent.CopyOnWriteArrayList<>();
        Set<String> inFlight = java.util.concurrent.ConcurrentHashMap.newKeySet();
        List<String> overlaps = new java.util.concurrent.CopyOnWriteArrayList<>();
        c.setConsumeMessageBatchMaxSize(1);
        c.registerMessageListener((MessageListenerOrderly) (msgs, ctx) -> {
            for (MessageExt m : msgs) {
                String q = String.valueOf(m.getQueueId());
                if (!inFlight.add(q)) {
                    overlaps.add(q);
                }
                seen.add(new String(m.getBody(), StandardCharsets.UTF_8) + "@" + m.getQueueId());
                inFlight.remove(q);
            }
            return ConsumeOrderlyStatus.SUCCESS;
        });
        c.start();
        try {
            Support.await(Duration.ofSeconds(30), "ordered messages", () -> seen.size() >= orders * perOrder);
        } finally {
            c.shutdown();
        }
        assertTrue(overlaps.isEmpty(), "one queue consumed by two threads at once: " + overlaps);
        int[] next = new int[orders];
        for (String s : seen) {
            String[] parts = s.split("[:@]");
            int o = Integer.parseInt(parts[0]);
            int i = Integer.parseInt(parts[1]);
            assertEquals(o, Integer.parseInt(parts[2]), "order " + o + " stays on queue " + o);
            assertEquals(next[o], i, "order " + o + " in sequence: " + seen);
            next[o]++;
        }
    }
}
