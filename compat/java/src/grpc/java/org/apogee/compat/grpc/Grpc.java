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
