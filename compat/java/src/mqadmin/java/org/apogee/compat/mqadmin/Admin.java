package org.apogee.compat.mqadmin;

import static org.junit.jupiter.api.Assertions.assertFalse;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.rocketmq.tools.command.MQAdminStartup;
import org.apogee.compat.Broker;

/** Runs one mqadmin command in this JVM and captures what it prints. */
final class Admin {
    private Admin() {
    }

    record Result(String out, String err) {
        /** Fails unless the command ran without an error of its own. */
        Result ok() {
            // A failing command prints "<Command> command failed" and a stack
            // trace on stderr. (Output may name exceptions as data: Apache's
            // queryMsgById shows a failed MessageTrack for a group that has
            // no retry topic.)
            assertFalse(err.contains("command failed") || err.contains("\tat org.apache.rocketmq"),
                "mqadmin failed:\n" + out + "\n" + err);
            return this;
        }
    }

    /** {@code mqadmin <args> -n <namesrv>}. */
    static synchronized Result run(String... args) {
        List<String> all = new ArrayList<>(Arrays.asList(args));
        all.add("-n");
        all.add(Broker.namesrv());
        PrintStream out = System.out;
        PrintStream err = System.err;
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        System.setOut(new PrintStream(o, true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
        try {
            MQAdminStartup.main0(all.toArray(new String[0]), null);
        } finally {
            System.setOut(out);
            System.setErr(err);
        }
        Result r = new Result(o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
        out.println("$ mqadmin " + String.join(" ", all) + "\n" + r.out + r.err);
        return r;
    }
}
