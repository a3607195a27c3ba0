package io.mirrord.jetbrains.it;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;

/**
 * Requests to the pod from the cluster's {@code client} namespace: {@code ip netns exec <ns>
 * curl ...} as an argument vector (the test harness passes the namespace and the pod's URL).
 */
final class ClientNamespace {
    /** What the pod (or whoever took the request) answered. */
    record Answer(String servedBy, String body) {}

    private final String ip;
    private final String ns;
    private final String podUrl;

    ClientNamespace(String ip, String ns, String podUrl) {
        this.ip = ip;
        this.ns = ns;
        this.podUrl = podUrl.endsWith("/") ? podUrl.substring(0, podUrl.length() - 1) : podUrl;
    }

    /** GET {@code path} on the pod with header {@code x-user: user}. */
    Answer get(String path, String user) throws IOException, InterruptedException {
        ProcessBuilder pb = new ProcessBuilder(List.of(ip, "netns", "exec", ns, "curl", "-sS", "--max-time", "10",
                "-D", "-", "-H", "x-user: " + user, podUrl + path));
        for (String proxy : List.of("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")) {
            pb.environment().remove(proxy);
        }
        pb.environment().remove("LD_PRELOAD");
        Process p = pb.start();
        p.getOutputStream().close();
        byte[] out = p.getInputStream().readAllBytes();
        String err = new String(p.getErrorStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(20, TimeUnit.SECONDS) || p.exitValue() != 0) {
            throw new AssertionError("curl " + path + " from " + ns + " failed: " + err);
        }
        String text = new String(out, StandardCharsets.UTF_8);
        String servedBy = "";
        int split = text.indexOf("\r\n\r\n");
        String head = split < 0 ? text : text.substring(0, split);
        for (String line : head.split("\r\n")) {
            int colon = line.indexOf(':');
            if (colon > 0 && line.substring(0, colon).trim().toLowerCase(Locale.ROOT).equals("x-served-by")) {
                servedBy = line.substring(colon + 1).trim();
            }
        }
        return new Answer(servedBy, split < 0 ? "" : text.substring(split + 4));
    }
}
