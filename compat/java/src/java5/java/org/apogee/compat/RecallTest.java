package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.exception.MQBrokerException;
import org.apache.rocketmq.client.exception.MQClientException;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.common.producer.RecallMessageHandle;
import org.junit.jupiter.api.Test;

/**
 * Recall (RocketMQ 5.3, RECALL_MESSAGE 370) through DefaultMQProducer: a
 * timer message's SendResult carries a recall handle; recallMessage with it
 * keeps the message from ever being delivered. Compiled for 5.x clients
 * only (4.9.8 has no recall).
 */
class RecallTest extends WithProducer {
    private static final int ILLEGAL_OPERATION = 604;

    private static SendResult sendAt(String topic, String body, long deliverAt) throws Exception {
        Message m = new Message(topic, "TagR", body.getBytes(StandardCharsets.UTF_8));
        m.setDeliverTimeMs(deliverAt);
        return producer.send(m);
    }

    @Test
    void recalledTimerMessageIsNeverDelivered() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("recall"), 2);
        String other = Support.createTopic(producer, Support.unique("recall-other"), 1);
        Map<String, Long> at = new ConcurrentHashMap<>();
        Map<String, MessageExt> msgs = new ConcurrentHashMap<>();
        DefaultMQPushConsumer c = DelayQueryBodyTest.arrivals(topic, at, msgs);
        try {
            long due = System.currentTimeMillis() + 4000;
            SendResult gone = sendAt(topic, "recalled", due);
            SendResult kept = sendAt(topic, "kept", due);
            assertNotNull(gone.getRecallHandle(), "a timer message's send answers a recall handle");
            assertNotNull(kept.getRecallHandle());
            RecallMessageHandle.HandleV1 h =
                (RecallMessageHandle.HandleV1) RecallMessageHandle.decodeHandle(gone.getRecallHandle());
            assertEquals(topic, h.getTopic());
            assertEquals(gone.getMsgId(), h.getMessageId());

            // A delay level is not recallable: no handle (as Apache).
            Message level = new Message(topic, "TagR", "level".getBytes(StandardCharsets.UTF_8));
            level.setDelayTimeLevel(1);
            assertNull(producer.send(level).getRecallHandle());

            // The client refuses a malformed handle itself; the broker one for another topic.
            assertThrows(MQClientException.class, () -> producer.recallMessage(topic, "not a handle"));
            MQBrokerException wrongTopic = assertThrows(MQBrokerException.class,
                () -> producer.recallMessage(other, gone.getRecallHandle()));
            assertEquals(ILLEGAL_OPERATION, wrongTopic.getResponseCode());

            assertEquals(gone.getMsgId(), producer.recallMessage(topic, gone.getRecallHandle()));

            Support.await(Duration.ofSeconds(20), "the kept timer message", () -> at.containsKey("kept"));
            assertTrue(at.get("kept") >= due - 100, "kept arrived early");
            // Both were due together; give the recalled one every chance to show up.
            Thread.sleep(2000);
            assertFalse(at.containsKey("recalled"), "a recalled message was delivered");

            // Its time has passed: too late to recall.
            MQBrokerException late = assertThrows(MQBrokerException.class,
                () -> producer.recallMessage(topic, kept.getRecallHandle()));
            assertEquals(ILLEGAL_OPERATION, late.getResponseCode());
        } finally {
            c.shutdown();
        }
    }
}
