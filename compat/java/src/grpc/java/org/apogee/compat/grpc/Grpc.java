package org.apogee.compat.grpc;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;
import org.apogee.compat.Broker;
import org.apogee.compat.Support;

/** Official gRPC clients pointed at the broker under test. */
final class Grpc {
    static final ClientServiceProvider PROVIDER = ClientServiceProvider.loadService();

    private Grpc() {
    }

    static ClientConfiguration config() {
        return ClientConfiguration.newBuilder()
            .setEndpoints(Broker.grpc())
            // The client's default, TLS: the port takes TLS and plaintext.
            .setRequestTimeout(Duration.ofSeconds(5))
            .build();
    }

    private static org.apache.rocketmq.client.producer.DefaultMQProducer admin;

    /**
     * A fresh topic created over remoting with its {@code message.type}
     * (NORMAL, FIFO, DELAY, TRANSACTION): Apache's proxy neither creates
     * topics on a route query nor takes a message of another type.
     */
    static synchronized String topic(String prefix, String type) throws Exception {
        if (admin == null) {
            admin = new org.apache.rocketmq.client.producer.DefaultMQProducer(Support.unique("grpc-admin"));
            admin.setNamesrvAddr(Broker.namesrv());
            admin.start();
        }
        String topic = Support.unique(prefix);
        // UPDATE_AND_CREATE_TOPIC on every broker, with the attribute (the
        // producer's createTopic drops attributes on 5.3.3).
        org.apache.rocketmq.client.impl.MQClientAPIImpl api =
            admin.getDefaultMQProducerImpl().getMqClientFactory().getMQClientAPIImpl();
        org.apache.rocketmq.common.TopicConfig tc = new org.apache.rocketmq.common.TopicConfig(topic, 4, 4);
        tc.setAttributes(Map.of("+message.type", type));
        for (org.apache.rocketmq.remoting.protocol.route.BrokerData bd
            : api.getBrokerClusterInfo(5000).getBrokerAddrTable().values()) {
            String addr = bd.getBrokerAddrs().get(0L);
            if (addr != null) {
                api.createTopic(addr, admin.getCreateTopicKey(), tc, 5000);
            }
        }
        Support.await(Duration.ofSeconds(20), "route of " + topic, () -> {
            try {
                return !admin.fetchPublishMessageQueues(topic).isEmpty();
            } catch (Exception e) {
                return false;
            }
        });
        return topic;
    }

    static Producer producer(String... topics) throws Exception {
        return PROVIDER.newProducerBuilder().setClientConfiguration(config()).setTopics(topics).build();
    }

    static SimpleConsumer simpleConsumer(String group, String topic, String tagExpr) throws Exception {
        return PROVIDER.newSimpleConsumerBuilder()
            .setClientConfiguration(config())
            .setConsumerGroup(group)
            .setAwaitDuration(Duration.ofSeconds(2))
            .setSubscriptionExpressions(Map.of(topic, new FilterExpression(tagExpr, FilterExpressionType.TAG)))
            .build();
    }

    static org.apache.rocketmq.client.apis.message.Message message(String topic, String tag, String body) {
        return PROVIDER.newMessageBuilder()
            .setTopic(topic)
            .setTag(tag)
            .setKeys("key-" + body)
            .setBody(body.getBytes(StandardCharsets.UTF_8))
            .build();
    }

    static String body(MessageView mv) {
        byte[] b = new byte[mv.getBody().remaining()];
        mv.getBody().duplicate().get(b);
        return new String(b, StandardCharsets.UTF_8);
    }

    /** Receives until {@code n} messages arrived or {@code timeout} passed; acks nothing. */
    static List<MessageView> receive(SimpleConsumer c, int n, Duration invisible, Duration timeout) throws Exception {
        List<MessageView> out = new ArrayList<>();
        long deadline = System.nanoTime() + timeout.toNanos();
        while (out.size() < n && System.nanoTime() < deadline) {
            out.addAll(c.receive(16, invisible));
        }
        return out;
    }
}
