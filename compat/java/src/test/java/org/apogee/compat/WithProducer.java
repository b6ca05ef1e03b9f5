package org.apogee.compat;

import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/** A test class with one started producer, shut down after its last test. */
abstract class WithProducer {
    static DefaultMQProducer producer;

    @BeforeAll
    static void startProducer() throws Exception {
        producer = Support.producer();
    }

    @AfterAll
    static void stopProducer() {
        producer.shutdown();
    }
}
