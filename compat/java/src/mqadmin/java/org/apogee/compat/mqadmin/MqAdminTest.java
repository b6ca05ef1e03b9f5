package org.apogee.compat.mqadmin;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apogee.compat.Support;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** rocketmq-tools' mqadmin commands against the broker under test. */
class MqAdminTest {
    static final String CLUSTER = "DefaultCluster";
    static DefaultMQProducer producer;
    /** A topic with 10 messages, consumed by {@link #group} (online). */
    static String topic;
    static String group;
    static DefaultMQPushConsumer consumer;
    static final List<SendResult> sent = new ArrayList<>();
    static String brokerAddr;
    static String brokerName;

    @BeforeAll
    static void start() throws Exception {
        producer = Support.producer();
        topic = Support.createTopic(producer, Support.unique("adm"), 4);
        for (int i = 0; i < 10; i++) {
            Message m = new Message(topic, "TagA", "key-" + i, ("body-" + i).getBytes(StandardCharsets.UTF_8));
            sent.add(producer.send(m));
        }
        group = Support.unique("CID_adm");
        consumer = Support.pushConsumer(group);
        consumer.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        consumer.subscribe(topic, "*");
        List<String> got = new java.util.concurrent.CopyOnWriteArrayList<>();
        consumer.registerMessageListener((MessageListenerConcurrently) (msgs, ctx) -> {
            msgs.forEach(m -> got.add(m.getMsgId()));
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        consumer.start();
        Support.await(Duration.ofSeconds(30), "10 consumed", () -> got.size() >= 10);
        // Offsets reach the broker within a second (persistConsumerOffsetInterval).
        Support.await(Duration.ofSeconds(20), "the group's offsets on the broker",
            () -> Admin.run("consumerProgress", "-g", group).out().contains("Diff Total: 0"));
        brokerName = sent.get(0).getMessageQueue().getBrokerName();
        Matcher m = Pattern.compile("(\\d+\\.\\d+\\.\\d+\\.\\d+:\\d+)").matcher(Admin.run("clusterList").ok().out());
        assertTrue(m.find(), "clusterList shows a broker address");
        brokerAddr = m.group(1);
    }

    @AfterAll
    static void stop() {
        consumer.shutdown();
        producer.shutdown();
    }

    @Test
    void clusterList() {
        String out = Admin.run("clusterList").ok().out();
        assertTrue(out.contains(CLUSTER), out);
        assertTrue(out.contains(brokerName), out);
        assertTrue(out.contains(brokerAddr), out);
    }

    @Test
    void topicList() {
        String out = Admin.run("topicList").ok().out();
        assertTrue(out.lines().anyMatch(l -> l.trim().equals(topic)), out);
        String withCluster = Admin.run("topicList", "-c").ok().out();
        assertTrue(withCluster.lines().anyMatch(l -> l.contains(topic) && l.contains(CLUSTER)), withCluster);
    }

    @Test
    void topicRoute() {
        String out = Admin.run("topicRoute", "-t", topic).ok().out();
        assertTrue(out.contains("\"brokerName\":\"" + brokerName + "\""), out);
        assertTrue(out.contains("\"readQueueNums\":4") && out.contains("\"writeQueueNums\":4"), out);
        assertTrue(out.contains(brokerAddr), out);
    }

    @Test
    void topicStatus() {
        String out = Admin.run("topicStatus", "-t", topic).ok().out();
        long total = 0;
        int rows = 0;
        for (String line : out.split("\n")) {
            String[] f = line.trim().split("\\s+");
            if (f.length >= 4 && f[0].equals(brokerName) && f[1].matches("\\d+")) {
                total += Long.parseLong(f[3]) - Long.parseLong(f[2]);
                rows++;
            }
        }
        assertEquals(4, rows, out);
        assertEquals(10, total, "max - min offsets add up to the 10 messages: " + out);
    }

    @Test
    void topicClusterList() {
        String out = Admin.run("topicClusterList", "-t", topic).ok().out();
        assertTrue(out.lines().anyMatch(l -> l.trim().equals(CLUSTER)), out);
    }

    @Test
    void updateTopicPermAndDeleteTopic() throws Exception {
        String t = Support.unique("adm-new");
        String out = Admin.run("updateTopic", "-c", CLUSTER, "-t", t, "-r", "3", "-w", "3").ok().out();
        assertTrue(out.contains("success"), out);
        Support.await(Duration.ofSeconds(10), "route of " + t,
            () -> Admin.run("topicRoute", "-t", t).out().contains("\"writeQueueNums\":3"));
        out = Admin.run("updateTopicPerm", "-c", CLUSTER, "-t", t, "-p", "4").ok().out();
        assertTrue(out.contains("success"), out);
        Support.await(Duration.ofSeconds(10), "perm 4 in the route",
            () -> Admin.run("topicRoute", "-t", t).out().contains("\"perm\":4"));
        out = Admin.run("deleteTopic", "-c", CLUSTER, "-t", t).ok().out();
        assertTrue(out.contains("delete topic [" + t + "] from cluster [" + CLUSTER + "] success"), out);
        assertFalse(Admin.run("topicList").ok().out().lines().anyMatch(l -> l.trim().equals(t)));
    }

    @Test
    void updateAndDeleteSubGroup() {
        String g = Support.unique("CID_new");
        String out = Admin.run("updateSubGroup", "-c", CLUSTER, "-g", g, "-r", "5").ok().out();
        assertTrue(out.contains("success"), out);
        assertTrue(out.contains(g) && out.contains("retryMaxTimes=5"), out);
        out = Admin.run("deleteSubGroup", "-c", CLUSTER, "-g", g).ok().out();
        assertTrue(out.contains("delete subscription group [" + g + "]") && out.contains("success"), out);
    }

    @Test
    void setConsumeMode() {
        String out = Admin.run("setConsumeMode", "-b", brokerAddr, "-t", topic, "-g", group, "-m", "POP", "-q", "1").ok().out();
        assertTrue(out.contains("set consume mode to " + brokerAddr + " success"), out);
        assertTrue(out.contains("consume mode[POP] popShareQueueNum[1]"), out);
        // Back to PULL: the other tests' consumer reads this topic.
        out = Admin.run("setConsumeMode", "-c", CLUSTER, "-t", topic, "-g", group, "-m", "PULL").ok().out();
        assertTrue(out.contains("success") && out.contains("consume mode[PULL]"), out);
    }

    @Test
    void consumerProgress() {
        String out = Admin.run("consumerProgress", "-g", group).ok().out();
        int rows = 0;
        for (String line : out.split("\n")) {
            if (line.startsWith(topic)) {
                rows++;
            }
        }
        assertEquals(4, rows, out);
        assertTrue(out.contains("Diff Total: 0"), out);
        String all = Admin.run("consumerProgress").ok().out();
        assertTrue(all.contains(group), all);
    }

    @Test
    void consumerConnection() {
        String out = Admin.run("consumerConnection", "-g", group).ok().out();
        assertTrue(out.contains(consumer.getDefaultMQPushConsumerImpl().getmQClientFactory().getClientId()), out);
        assertTrue(out.contains(topic) && out.contains("CONSUME_PASSIVELY") && out.contains("CLUSTERING"), out);
    }

    @Test
    void producerConnection() {
        String out = Admin.run("producerConnection", "-g", producer.getProducerGroup(), "-t", topic).ok().out();
        assertTrue(out.contains(producer.getDefaultMQProducerImpl().getMqClientFactory().getClientId()), out);
    }

    @Test
    void consumerStatus() {
        String out = Admin.run("consumerStatus", "-g", group).ok().out();
        assertTrue(out.contains(consumer.getDefaultMQPushConsumerImpl().getmQClientFactory().getClientId()), out);
    }

    @Test
    void brokerStatus() {
        String out = Admin.run("brokerStatus", "-b", brokerAddr).ok().out();
        assertTrue(out.lines().anyMatch(l -> l.startsWith("msgPutTotalTodayNow")), out);
        assertTrue(out.lines().anyMatch(l -> l.startsWith("brokerVersionDesc")), out);
    }

    @Test
    void brokerConsumeStats() {
        String out = Admin.run("brokerConsumeStats", "-b", brokerAddr).ok().out();
        assertTrue(out.contains(topic) && out.contains(group), out);
    }

    @Test
    void statsAll() {
        String out = Admin.run("statsAll", "-t", topic).ok().out();
        assertTrue(out.lines().anyMatch(l -> l.startsWith(topic) && l.contains(group)), out);
    }

    @Test
    void queryMsgByIdKeyOffsetAndPrintMsg() {
        SendResult r = sent.get(3);
        String out = Admin.run("queryMsgById", "-t", topic, "-i", r.getMsgId()).ok().out();
        assertTrue(out.contains("body-3") || out.contains(r.getMsgId()), out);
        assertTrue(out.contains("key-3"), out);
        out = Admin.run("queryMsgByKey", "-t", topic, "-k", "key-5").ok().out();
        assertTrue(out.contains(sent.get(5).getMsgId()), out);
        out = Admin.run("queryMsgByOffset", "-t", topic, "-b", brokerName,
            "-i", String.valueOf(r.getMessageQueue().getQueueId()), "-o", String.valueOf(r.getQueueOffset())).ok().out();
        assertTrue(out.contains("key-3"), out);
        out = Admin.run("printMsg", "-t", topic, "-d", "true").ok().out();
        assertTrue(out.contains("body-0") && out.contains("body-9"), out);
    }

    @Test
    void resetSkipAndCloneOffsets() throws Exception {
        // As in Apache RocketMQ, offsets are only taken for a group that exists.
        String clone = group + "-clone";
        Admin.run("updateSubGroup", "-c", CLUSTER, "-g", clone).ok();
        String out = Admin.run("cloneGroupOffset", "-s", group, "-d", clone, "-t", topic).ok().out();
        assertTrue(out.contains("clone group offset success"), out);
        // -t: the clone never ran, so it has no retry topic to find the brokers by.
        out = Admin.run("consumerProgress", "-g", clone, "-t", topic).ok().out();
        assertTrue(out.contains("Diff Total: 0") && out.contains(topic), "the clone has the source's offsets: " + out);
        // Both print one "#brokerName #queueId #offset" row per queue; all
        // messages are consumed, so every offset is the queue's max offset.
        for (String[] cmd : new String[][] {{"skipAccumulatedMessage", "-g", group, "-t", topic},
            {"resetOffsetByTime", "-g", group, "-t", topic, "-s", "now"}}) {
            out = Admin.run(cmd).ok().out();
            long total = 0;
            int rows = 0;
            for (String line : out.split("\n")) {
                String[] f = line.trim().split("\\s+");
                if (f.length == 3 && f[0].equals(brokerName)) {
                    total += Long.parseLong(f[2]);
                    rows++;
                }
            }
            assertEquals(4, rows, out);
            assertEquals(10, total, out);
        }
    }

    @Test
    void brokerAndNamesrvConfig() {
        String out = Admin.run("getBrokerConfig", "-b", brokerAddr).ok().out();
        assertTrue(out.contains("brokerClusterName") && out.contains(CLUSTER), out);
        out = Admin.run("updateBrokerConfig", "-b", brokerAddr, "-k", "maxTransferCountOnMessageInMemory", "-v", "64")
            .ok().out();
        assertTrue(out.contains("success"), out);
        assertTrue(Admin.run("getBrokerConfig", "-b", brokerAddr).ok().out()
            .lines().anyMatch(l -> l.matches("maxTransferCountOnMessageInMemory\\s*=\\s*64")));
        out = Admin.run("getNamesrvConfig").ok().out();
        assertTrue(out.contains("listenPort") || out.contains("orderMessageEnable"), out);
        out = Admin.run("updateNamesrvConfig", "-k", "orderMessageEnable", "-v", "true").ok().out();
        assertTrue(out.contains("success"), out);
        assertTrue(Admin.run("getNamesrvConfig").ok().out()
            .lines().anyMatch(l -> l.matches(".*orderMessageEnable\\s*=\\s*true")));
        Admin.run("updateNamesrvConfig", "-k", "orderMessageEnable", "-v", "false").ok();
    }

    @Test
    void kvConfig() {
        String out = Admin.run("updateKvConfig", "-s", "compatNs", "-k", "compatKey", "-v", "compatValue").ok().out();
        assertTrue(out.contains("success"), out);
        out = Admin.run("deleteKvConfig", "-s", "compatNs", "-k", "compatKey").ok().out();
        assertTrue(out.contains("success"), out);
    }

    @Test
    void wipeAndAddWritePerm() throws Exception {
        // Its own topic: the shared one must keep exactly its 10 messages.
        String t = Support.createTopic(producer, Support.unique("adm-perm"), 2);
        String out = Admin.run("wipeWritePerm", "-b", brokerName).ok().out();
        assertTrue(out.matches("(?s)wipe write perm of broker\\[" + brokerName + "\\] in name server\\[.*\\] OK, \\d+.*"), out);
        out = Admin.run("addWritePerm", "-b", brokerName).ok().out();
        assertTrue(out.matches("(?s)add write perm of broker\\[" + brokerName + "\\] in name server\\[.*\\] OK, \\d+.*"), out);
        // The broker takes writes again.
        Support.await(Duration.ofSeconds(40), "a send after addWritePerm", () -> {
            try {
                return producer.send(new Message(t, "TagA", "after".getBytes(StandardCharsets.UTF_8)))
                    .getSendStatus().name().equals("SEND_OK");
            } catch (Exception e) {
                return false;
            }
        });
    }

    @Test
    void cleanExpiredCqAndUnusedTopic() {
        String out = Admin.run("cleanExpiredCQ", "-c", CLUSTER).ok().out();
        assertTrue(out.contains("success"), out);
        out = Admin.run("cleanUnusedTopic", "-c", CLUSTER).ok().out();
        assertTrue(out.contains("success"), out);
    }

    @Test
    void allocateMQ() {
        String out = Admin.run("allocateMQ", "-t", topic, "-i", "10.0.0.1,10.0.0.2").ok().out();
        assertTrue(out.contains("10.0.0.1") && out.contains("10.0.0.2") && out.contains(topic), out);
    }
}
