package org.apogee.compat;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * The broker under test, one per test JVM: {@code apogee standalone} started on
 * ephemeral loopback ports in a temp dir (binary from -Dapogee.bin or
 * $APOGEE_BIN), or an already running NameServer given as -Dcompat.namesrv
 * (Apache RocketMQ from scripts/reference).
 */
public final class Broker {
    private static Broker instance;

    private final String namesrv;
    private final Process process;
    private final Path dir;
    private final String grpc;

    private Broker(String namesrv, Process process, Path dir) {
        this(namesrv, process, dir, null);
    }

    private Broker(String namesrv, Process process, Path dir, String grpc) {
        this.namesrv = namesrv;
        this.process = process;
        this.dir = dir;
        this.grpc = grpc;
    }

    /** The gRPC endpoint (host:port) of the broker under test; -Dcompat.grpc overrides. */
    public static synchronized String grpc() {
        String external = System.getProperty("compat.grpc", "");
        if (external != null && !external.isBlank()) {
            return external.trim();
        }
        namesrv();
        if (instance.grpc == null) {
            throw new IllegalStateException("no gRPC endpoint: set -Dcompat.grpc=host:port");
        }
        return instance.grpc;
    }

    /** The NameServer address clients use. */
    public static synchronized String namesrv() {
        if (instance == null) {
            instance = start();
            Runtime.getRuntime().addShutdownHook(new Thread(instance::stop));
        }
        return instance.namesrv;
    }

    /** True when the suite runs against apogee started by itself. */
    public static boolean isApogee() {
        namesrv();
        return instance.process != null;
    }

    private static Broker start() {
        String external = System.getProperty("compat.namesrv", "");
        if (external == null || external.isBlank()) {
            external = System.getenv().getOrDefault("COMPAT_NAMESRV", "");
        }
        if (!external.isBlank()) {
            return new Broker(external.trim(), null, null);
        }
        String bin = System.getProperty("apogee.bin");
        if (bin == null || bin.isBlank()) {
            bin = System.getenv().getOrDefault("APOGEE_BIN", "target/debug/apogee");
        }
        File exe = new File(bin);
        if (!exe.canExecute()) {
            throw new IllegalStateException("apogee binary not found at " + exe.getAbsolutePath()
                + " (build it with `cargo build -p apogee`, or set -Dapogee.bin / APOGEE_BIN)");
        }
        try {
            Path dir = Files.createTempDirectory("apogee-compat-java");
            ProcessBuilder pb = new ProcessBuilder(List.of(exe.getAbsolutePath(), "standalone",
                "--namesrv-port", "0", "--listen-port", "0",
                "--set", "bindAddress=127.0.0.1", "--set", "brokerIP1=127.0.0.1",
                "--set", "diskSpaceWarningLevelRatio=100", "--set", "diskSpaceCleanForciblyRatio=100",
                "--set", "diskMaxUsedSpaceRatio=100",
                // TransactionTest: check-back within seconds (as scripts/reference sets Apache).
                "--set", "transactionCheckInterval=1000", "--set", "transactionTimeOut=3000"))
                .directory(dir.toFile())
                .redirectError(logFile(dir).toFile());
            pb.environment().putIfAbsent("APOGEE_LOG", "warn");
            Process p = pb.start();
            CompletableFuture<String> ns = new CompletableFuture<>();
            CompletableFuture<String> broker = new CompletableFuture<>();
            CompletableFuture<String> grpc = new CompletableFuture<>();
            Thread reader = new Thread(() -> {
                try (BufferedReader r = new BufferedReader(
                    new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                    String line;
                    while ((line = r.readLine()) != null) {
                        if (line.startsWith("apogee namesrv listening on ")) {
                            ns.complete(line.substring("apogee namesrv listening on ".length()).trim());
                        } else if (line.startsWith("apogee broker listening on ")) {
                            broker.complete(line.substring("apogee broker listening on ".length()).trim());
                        } else if (line.startsWith("apogee grpc listening on ")) {
                            grpc.complete(line.substring("apogee grpc listening on ".length()).trim());
                        }
                    }
                } catch (IOException ignored) {
                    // the process ended
                }
                ns.completeExceptionally(new IllegalStateException("apogee exited before listening"));
            }, "apogee-stdout");
            reader.setDaemon(true);
            reader.start();
            String addr = ns.get(30, TimeUnit.SECONDS);
            broker.get(30, TimeUnit.SECONDS);
            return new Broker(addr, p, dir, grpc.get(30, TimeUnit.SECONDS));
        } catch (Exception e) {
            throw new IllegalStateException("cannot start apogee standalone: " + e, e);
        }
    }

    /** apogee's log: under -Dcompat.logDir (the build folder) when given. */
    private static Path logFile(Path dir) throws IOException {
        String logDir = System.getProperty("compat.logDir", "");
        if (logDir.isBlank()) {
            return dir.resolve("apogee.log");
        }
        Files.createDirectories(Path.of(logDir));
        return Path.of(logDir, "apogee-" + System.getProperty("rocketmq.version", "client") + ".log");
    }

    private void stop() {
        if (process == null) {
            return;
        }
        process.destroy();
        try {
            if (!process.waitFor(20, TimeUnit.SECONDS)) {
                process.destroyForcibly();
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
        }
        if (Boolean.getBoolean("compat.keepData")) {
            System.err.println("apogee data kept in " + dir);
            return;
        }
        try (Stream<Path> walk = Files.walk(dir)) {
            walk.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
        } catch (IOException ignored) {
            // best effort
        }
    }
}
