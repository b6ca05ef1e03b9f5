package org.apogee.compat;

import java.time.Duration;
import java.util.Collection;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

import org.apache.rocketmq.client.ClientConfig;
import org.apache.rocketmq.client.consumer.DefaultLitePullConsumer;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.common.message.MessageQueue;

/** Clients with short timers, unique names and waiting helpers. */
public final class Support {
    private Support() {
    }

    /** A name unique to this run: {@code prefix-xxxxxxxx}. */
    public static String unique(String prefix) {
        return prefix + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    /** Short client timers: route polls, heartbeats and offset persistence every second. */
    public static <T extends ClientConfig> T fast(T c) {
        c.setNamesrvAddr(Broker.namesrv());
        c.setPollNameServerInterval(1000);
        c.setHeartbeatBrokerInterval(1000);
        c.setPersistConsumerOffsetInterval(1000);
        c.setInstanceName(unique("inst"));
        return c;
    }

    public static DefaultMQProducer producer() throws Exception {
        DefaultMQProducer p = fast(new DefaultMQProducer(unique("PID")));
        p.setSendMsgTimeout(5000);
        p.setRetryTimesWhenSendFailed(1);
        p.start();
        return p;
    }

    public static DefaultMQPushConsumer pushConsumer(String group) {
        DefaultMQPushConsumer c = fast(new DefaultMQPushConsumer(group));
        c.setConsumeTimeout(1);
        c.setPullInterval(0);
        return c;
    }

    public static DefaultLitePullConsumer litePullConsumer(String group) {
        DefaultLitePullConsumer c = fast(new DefaultLitePullConsumer(group));
        c.setAutoCommitIntervalMillis(1000);
        c.setPollTimeoutMillis(1000);
        return c;
    }

    /** Creates {@code topic} with {@code queues} queues and waits for its route. */
    public static String createTopic(DefaultMQProducer p, String topic, int queues) throws Exception {
        // 4.9.8 has createTopic(key, topic, queues); 5.x has (key, topic, queues, attributes).
        try {
            DefaultMQProducer.class.getMethod("createTopic", String.class, String.class, int.class, java.util.Map.class)
                .invoke(p, p.getCreateTopicKey(), topic, queues, null);
        } catch (NoSuchMethodException e) {
            DefaultMQProducer.class.getMethod("createTopic", String.class, String.class, int.class)
                .invoke(p, p.getCreateTopicKey(), topic, queues);
        }
        await(Duration.ofSeconds(20), "route of " + topic, () -> {
            try {
                Collection<MessageQueue> mqs = p.fetchPublishMessageQueues(topic);
                return mqs.size() == queues;
            } catch (Exception e) {
                return false;
            }
        });
        return topic;
    }

    /** Polls {@code cond} every 50 ms until true; fails after {@code timeout}. */
    public static void await(Duration timeout, String what, BooleanSupplier cond) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out after " + timeout.toSeconds() + " s waiting for " + what);
            }
            TimeUnit.MILLISECONDS.sleep(50);
        }
    }

    /**
     * Sets CLUSTERING or BROADCASTING: MessageModel moved package between 4.x
     * (common.protocol.heartbeat) and 5.x (remoting.protocol.heartbeat).
     */
    @SuppressWarnings({"unchecked", "rawtypes"})
    public static void setMessageModel(DefaultMQPushConsumer c, String model) throws Exception {
        Class<?> cls;
        try {
            cls = Class.forName("org.apache.rocketmq.remoting.protocol.heartbeat.MessageModel");
        } catch (ClassNotFoundException e) {
            cls = Class.forName("org.apache.rocketmq.common.protocol.heartbeat.MessageModel");
        }
        Object value = Enum.valueOf((Class<Enum>) cls, model);
        DefaultMQPushConsumer.class.getMethod("setMessageModel", cls).invoke(c, value);
    }

    /** The major version of the rocketmq-client under test (4 or 5). */
    public static int clientMajor() {
        String v = org.apache.rocketmq.common.MQVersion.getVersionDesc(org.apache.rocketmq.common.MQVersion.CURRENT_VERSION);
        // V4_9_8 / V5_3_3
        return Character.getNumericValue(v.charAt(1));
    }
}
