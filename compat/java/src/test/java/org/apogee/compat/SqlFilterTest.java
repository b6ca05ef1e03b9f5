package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.MessageSelector;
import org.apache.rocketmq.client.exception.MQClientException;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.junit.jupiter.api.Test;

/**
 * {@code MessageSelector.bySql}: one push consumer group per expression over
 * the same eight messages; each must receive exactly the messages its
 * expression selects under RocketMQ's rules (a missing property makes a
 * comparison unknown, a property that is no number fails a numeric
 * comparison, TAGS is visible as a property). The broker needs
 * enablePropertyFilter=true (Apogee's default; set in scripts/reference for
 * Apache).
 */
class SqlFilterTest extends WithProducer {
    /** m0..m7: user properties (name=value pairs) and tag. */
    private static final String[][] MESSAGES = {
        {"TagA", "a", "1", "color", "red"},
        {"TagB", "a", "2", "color", "blue"},
        {"TagA", "a", "3", "color", "red", "price", "9.5"},
        {"TagC", "a", "10"},
        {"TagB", "color", "green"},
        {"TagA", "a", "7", "color", "blue", "price", "100.25"},
        {"TagC", "a", "abc", "color", "red"},
        {null},
    };

    private static Map<String, String> table() {
        Map<String, String> t = new LinkedHashMap<>();
        t.put("a BETWEEN 2 AND 7", "m1 m2 m5");
        t.put("color = 'red' OR color = 'blue'", "m0 m1 m2 m5 m6");
        t.put("color IN ('red', 'green') AND a > 1", "m2");
        t.put("color IS NULL", "m3 m7");
        t.put("price >= 9.5", "m2 m5");
        t.put("TAGS = 'TagA' AND NOT (color = 'blue')", "m0 m2");
        t.put("a NOT IN ('1', '2', '3')", "m3 m5 m6");
        t.put("color <> 'red' AND a IS NOT NULL", "m1 m5");
        return t;
    }

    @Test
    void eachExpressionGetsTheMessagesItSelects() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("sql"), 2);
        for (int i = 0; i < MESSAGES.length; i++) {
            String[] spec = MESSAGES[i];
            Message m = new Message(topic, ("m" + i).getBytes(StandardCharsets.UTF_8));
            if (spec[0] != null) {
                m.setTags(spec[0]);
            }
            for (int k = 1; k + 1 < spec.length; k += 2) {
                m.putUserProperty(spec[k], spec[k + 1]);
            }
            SendResult r = producer.send(m);
            assertEquals(SendStatus.SEND_OK, r.getSendStatus());
        }
        Map<String, String> table = table();
        List<DefaultMQPushConsumer> consumers = new ArrayList<>();
        Map<String, Collector> got = new LinkedHashMap<>();
        try {
            for (String expr : table.keySet()) {
                Collector col = new Collector();
                DefaultMQPushConsumer c = Support.pushConsumer(Support.unique("CID_sql"));
                c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
                c.subscribe(topic, MessageSelector.bySql(expr));
                c.registerMessageListener(col);
                c.start();
                consumers.add(c);
                got.put(expr, col);
            }
            for (Map.Entry<String, String> e : table.entrySet()) {
                int want = e.getValue().split(" ").length;
                got.get(e.getKey()).awaitCount(want, Duration.ofSeconds(30));
            }
            // Time for anything that should not arrive to arrive.
            Thread.sleep(3000);
            for (Map.Entry<String, String> e : table.entrySet()) {
                TreeSet<String> received = new TreeSet<>(got.get(e.getKey()).bodies());
                assertEquals(new TreeSet<>(List.of(e.getValue().split(" "))), received, e.getKey());
                assertEquals(received.size(), got.get(e.getKey()).received.size(),
                    e.getKey() + ": a message delivered twice");
            }
        } finally {
            for (DefaultMQPushConsumer c : consumers) {
                c.shutdown();
            }
        }
    }

    @Test
    void aMalformedExpressionFailsTheConsumerStart() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("sqlbad"), 1);
        DefaultMQPushConsumer c = Support.pushConsumer(Support.unique("CID_sqlbad"));
        c.subscribe(topic, MessageSelector.bySql("a > "));
        c.registerMessageListener(new Collector());
        try {
            // The client checks the subscription with CHECK_CLIENT_CONFIG at
            // start; the broker answers SUBSCRIPTION_PARSE_FAILED.
            assertThrows(MQClientException.class, c::start);
        } finally {
            c.shutdown();
        }
    }
}
