package org.apogee.compat;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.common.message.MessageExt;

/** A concurrent listener that keeps every message it is given. */
public class Collector implements MessageListenerConcurrently {
    public final List<MessageExt> received = new CopyOnWriteArrayList<>();

    @Override
    public ConsumeConcurrentlyStatus consumeMessage(List<MessageExt> msgs,
        org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyContext context) {
        received.addAll(msgs);
        return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
    }

    /** Bodies received, as UTF-8 strings, in arrival order. */
    public List<String> bodies() {
        List<String> out = new ArrayList<>();
        for (MessageExt m : received) {
            out.add(new String(m.getBody(), StandardCharsets.UTF_8));
        }
        return out;
    }

    /** Waits until at least {@code n} messages arrived. */
    public void awaitCount(int n, Duration timeout) throws InterruptedException {
        Support.await(timeout, n + " messages (have " + received.size() + ")", () -> received.size() >= n);
    }
}
