package org.apogee.compat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.producer.LocalTransactionState;
import org.apache.rocketmq.client.producer.SendStatus;
import org.apache.rocketmq.client.producer.TransactionListener;
import org.apache.rocketmq.client.producer.TransactionMQProducer;
import org.apache.rocketmq.client.producer.TransactionSendResult;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.junit.jupiter.api.Test;

/**
 * {@code TransactionMQProducer}: a committed half message is delivered once,
 * a rolled-back one never, and one left UNKNOWN is resolved by the broker's
 * check-back (CHECK_TRANSACTION_STATE) — committed or rolled back as the
 * listener's check answers. The broker runs with short check timers
 * (transactionCheckInterval=1000, transactionTimeOut=3000: Broker.java for
 * Apogee, scripts/reference for Apache, which also needs its op-message
 * batching, transactionOpBatchInterval, well below the timeout).
 */
class TransactionTest extends WithProducer {
    @Test
    void commitRollbackAndCheckBack() throws Exception {
        String topic = Support.createTopic(producer, Support.unique("tx"), 2);
        Set<String> checked = ConcurrentHashMap.newKeySet();
        AtomicInteger checksOfDecided = new AtomicInteger();
        TransactionMQProducer tx = Support.fast(new TransactionMQProducer(Support.unique("PID_tx")));
        tx.setSendMsgTimeout(5000);
        tx.setTransactionListener(new TransactionListener() {
            @Override
            public LocalTransactionState executeLocalTransaction(Message msg, Object arg) {
                return decision(new String(msg.getBody(), StandardCharsets.UTF_8));
            }

            @Override
            public LocalTransactionState checkLocalTransaction(MessageExt msg) {
                String body = new String(msg.getBody(), StandardCharsets.UTF_8);
                checked.add(body);
                if (body.startsWith("unknown-commit")) {
                    return LocalTransactionState.COMMIT_MESSAGE;
                }
                if (body.startsWith("unknown-rollback")) {
                    return LocalTransactionState.ROLLBACK_MESSAGE;
                }
                checksOfDecided.incrementAndGet();
                return decision(body);
            }
        });
        tx.start();
        Collector col = new Collector();
        DefaultMQPushConsumer c = Support.pushConsumer(Support.unique("CID_tx"));
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, "*");
        c.registerMessageListener(col);
        try {
            List<String> bodies = List.of("commit-0", "commit-1", "commit-2",
                "rollback-0", "rollback-1", "rollback-2",
                "unknown-commit-0", "unknown-commit-1", "unknown-rollback-0");
            for (String b : bodies) {
                Message m = new Message(topic, "TagTx", b.getBytes(StandardCharsets.UTF_8));
                TransactionSendResult r = tx.sendMessageInTransaction(m, null);
                assertEquals(SendStatus.SEND_OK, r.getSendStatus(), b);
                assertEquals(decision(b), r.getLocalTransactionState(), b);
            }
            c.start();
            Set<String> want = new TreeSet<>(List.of("commit-0", "commit-1", "commit-2",
                "unknown-commit-0", "unknown-commit-1"));
            // Check-back: older than transactionTimeOut, at the next check.
            col.awaitCount(want.size(), Duration.ofSeconds(60));
            Support.await(Duration.ofSeconds(60), "the check of unknown-rollback-0",
                () -> checked.contains("unknown-rollback-0"));
            // Time for a rolled-back or twice-committed message to show up.
            Thread.sleep(4000);
            assertEquals(want, new TreeSet<>(col.bodies()));
            assertEquals(want.size(), col.received.size(), "a message delivered twice: " + col.bodies());
            assertTrue(checked.containsAll(List.of("unknown-commit-0", "unknown-commit-1")), checked.toString());
            assertEquals(0, checksOfDecided.get(), "a decided transaction was checked: " + checked);
            for (MessageExt m : col.received) {
                assertEquals(topic, m.getTopic());
                assertEquals("TagTx", m.getTags());
                // (Apache 5.3.3 leaves REAL_TOPIC / REAL_QID in the committed
                // message's properties, Apogee removes them: not asserted.)
            }
        } finally {
            c.shutdown();
            tx.shutdown();
        }
    }

    private static LocalTransactionState decision(String body) {
        if (body.startsWith("commit")) {
            return LocalTransactionState.COMMIT_MESSAGE;
        }
        if (body.startsWith("rollback")) {
            return LocalTransactionState.ROLLBACK_MESSAGE;
        }
        return LocalTransactionState.UNKNOW;
    }
}
