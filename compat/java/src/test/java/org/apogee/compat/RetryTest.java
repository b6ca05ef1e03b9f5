package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;

import org.apache.rocketmq.client.QueryResult;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.common.MixAll;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.junit.jupiter.api.Test;

/** RECONSUME_LATER: redelivery through the retry topic, then %DLQ%group. */
class RetryTest extends WithProducer {
    @Test
    void failedOnceThenConsumed() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("retry1"), 2);
        String group = Support.unique("CID_retry1");
        List<Integer> attempts = new CopyOnWriteArrayList<>();
        DefaultMQPushConsumer c = Support.pushConsumer(group);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
            MessageExt m = msgs.get(0);
            attempts.add(m.getReconsumeTimes());
            if (m.getReconsumeTimes() == 0) {
                ctx.setDelayLevelWhenNextConsume(1);
                return ConsumeConcurrentlyStatus.RECONSUME_LATER;
            }
            assertEquals("once", new String(m.getBody(), StandardCharsets.UTF_8));
            assertEquals(topic, m.getTopic(), "the retried message carries its original topic");
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        try {
            producer.send(new Message(topic, "TagA", "once".getBytes(StandardCharsets.UTF_8)));
            Support.await(Duration.ofSeconds(30), "a redelivery", () -> attempts.size() >= 2);
            TimeUnit.SECONDS.sleep(2);
        } finally {
            c.shutdown();
        }
        assertEquals(List.of(0, 1), attempts);
    }

    @Test
    void deadLetterAfterMaxReconsumeTimes() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("retry-dlq"), 2);
        String group = Support.unique("CID_dlq");
        String key = Support.unique("dlq-key");
        List<Integer> attempts = new CopyOnWriteArrayList<>();
        DefaultMQPushConsumer c = Support.pushConsumer(group);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.setMaxReconsumeTimes(2);
        c.subscribe(topic, "*");
        c.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
            attempts.add(msgs.get(0).getReconsumeTimes());
            ctx.setDelayLevelWhenNextConsume(1);
            return ConsumeConcurrentlyStatus.RECONSUME_LATER;
        });
        c.start();
        long begin = System.currentTimeMillis() - 60_000;
        try {
            Message m = new Message(topic, "TagA", "doomed".getBytes(StandardCharsets.UTF_8));
            m.setKeys(key);
            producer.send(m);
            Support.await(Duration.ofSeconds(40), "1 delivery + 2 retries", () -> attempts.size() >= 3);
            // No fourth delivery: the message went to the dead-letter queue.
            TimeUnit.SECONDS.sleep(3);
        } finally {
            c.shutdown();
        }
        assertEquals(List.of(0, 1, 2), attempts);
        String dlq = MixAll.getDLQTopic(group);
        assertEquals("%DLQ%" + group, dlq);
        QueryResult[] found = new QueryResult[1];
        Support.await(Duration.ofSeconds(20), "the message in " + dlq, () -> {
            try {
                found[0] = producer.queryMessage(dlq, key, 32, begin, System.currentTimeMillis() + 60_000);
                return !found[0].getMessageList().isEmpty();
            } catch (Exception e) {
                return false;
            }
        });
        MessageExt dead = found[0].getMessageList().get(0);
        assertEquals(dlq, dead.getTopic());
        assertEquals("doomed", new String(dead.getBody(), StandardCharsets.UTF_8));
        assertEquals(key, dead.getKeys());
        assertTrue(dead.getReconsumeTimes() >= 2, "reconsume times " + dead.getReconsumeTimes());
    }
}
