package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

import org.apache.rocketmq.client.consumer.DefaultLitePullConsumer;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.common.message.MessageQueue;
import org.junit.jupiter.api.Test;

/** DefaultLitePullConsumer: subscribe, assign, seek, commit. */
class LitePullTest extends WithProducer {
    /** Sends {@code n} messages to queue {@code queue} of {@code topic}. */
    static void sendToQueue(String topic, int queue, int n) throws Exception {
        MessageQueue mq = new MessageQueue(topic, producer.fetchPublishMessageQueues(topic).iterator().next()
            .getBrokerName(), queue);
        for (int i = 0; i < n; i++) {
            String body = "q" + queue + "-" + i;
            assertEquals(SendStatus.SEND_OK,
                producer.send(new Message(topic, "TagA", body.getBytes(StandardCharsets.UTF_8)), mq).getSendStatus());
        }
    }

    static List<MessageExt> pollUntil(DefaultLitePullConsumer c, int n, Duration timeout) throws Exception {
        List<MessageExt> out = new ArrayList<>();
        Support.await(timeout, n + " polled messages", () -> {
            out.addAll(c.poll(200));
            return out.size() >= n;
        });
        return out;
    }

    /**
     * Seeks and polls until {@code n} messages arrived, seeking again when
     * none came: the client's previous pull task can consume a seek offset
     * meant for its successor (it reads the seek offset after the seek
     * cancelled it, then returns), which leaves the queue at the group's
     * start offset: nothing, or messages from elsewhere, arrive. That race
     * is in the client, with any broker.
     */
    static List<MessageExt> seekAndPoll(DefaultLitePullConsumer c, MessageQueue mq, long offset, int n)
        throws Exception {
        for (int attempt = 0; ; attempt++) {
            c.seek(mq, offset);
            List<MessageExt> out = new ArrayList<>();
            long deadline = System.nanoTime() + Duration.ofSeconds(8).toNanos();
            while (out.size() < n && System.nanoTime() < deadline) {
                out.addAll(c.poll(200));
            }
            boolean raced = out.isEmpty() || out.get(0).getQueueOffset() != offset;
            if (!raced || attempt == 2) {
                assertEquals(offset, out.isEmpty() ? -1 : out.get(0).getQueueOffset(), "first offset after seek");
                assertTrue(out.size() >= n, "after 3 seeks to " + offset + " only " + out.size() + " of " + n);
                return out;
            }
        }
    }

    @Test
    void subscribeAndPoll() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("lite-sub"), 4);
        Set<String> sent = new HashSet<>();
        for (int i = 0; i < 20; i++) {
            String body = "s" + i;
            producer.send(new Message(topic, "TagA", body.getBytes(StandardCharsets.UTF_8)));
            sent.add(body);
        }
        DefaultLitePullConsumer c = Support.litePullConsumer(Support.unique("CID_lite_sub"));
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        c.start();
        try {
            List<MessageExt> got = pollUntil(c, 20, Duration.ofSeconds(30));
            Set<String> bodies = new HashSet<>();
            for (MessageExt m : got) {
                bodies.add(new String(m.getBody(), StandardCharsets.UTF_8));
            }
            assertEquals(sent, bodies);
        } finally {
            c.shutdown();
        }
    }

    @Test
    void assignSeekCommitAndResume() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("lite-assign"), 2);
        sendToQueue(topic, 0, 10);
        sendToQueue(topic, 1, 10);
        String group = Support.unique("CID_lite_assign");
        DefaultLitePullConsumer c = Support.litePullConsumer(group);
        c.setAutoCommit(false);
        c.start();
        Collection<MessageQueue> mqs = c.fetchMessageQueues(topic);
        assertEquals(2, mqs.size());
        MessageQueue q0 = null;
        for (MessageQueue mq : mqs) {
            if (mq.getQueueId() == 0) {
                q0 = mq;
            }
        }
        assertNotNull(q0);
        try {
            c.assign(List.of(q0));
            List<MessageExt> got = seekAndPoll(c, q0, 6, 4);
            assertEquals(4, got.size(), "offsets 6..9 of queue 0");
            for (int i = 0; i < 4; i++) {
                assertEquals(0, got.get(i).getQueueId());
                assertEquals(6 + i, got.get(i).getQueueOffset());
                assertEquals("q0-" + (6 + i), new String(got.get(i).getBody(), StandardCharsets.UTF_8));
            }
            c.commitSync();
            final MessageQueue mq0 = q0;
            Support.await(Duration.ofSeconds(10), "committed offset 10", () -> {
                try {
                    Long off = c.committed(mq0);
                    return off != null && off == 10;
                } catch (Exception e) {
                    return false;
                }
            });
            List<MessageExt> again = seekAndPoll(c, q0, 2, 8);
            assertEquals(2, again.get(0).getQueueOffset(), "seek back re-reads");
        } finally {
            c.shutdown();
        }
        // A new consumer in the same group resumes from the committed offset (10).
        sendToQueue(topic, 0, 3);
        DefaultLitePullConsumer d = Support.litePullConsumer(group);
        d.setAutoCommit(false);
        d.start();
        try {
            d.assign(List.of(q0));
            List<MessageExt> got = pollUntil(d, 3, Duration.ofSeconds(20));
            assertEquals(10, got.get(0).getQueueOffset(), "resumes at the committed offset");
            assertTrue(got.stream().allMatch(m -> m.getQueueOffset() >= 10));
        } finally {
            d.shutdown();
        }
    }
}
