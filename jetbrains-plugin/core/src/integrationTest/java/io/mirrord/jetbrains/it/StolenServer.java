package io.mirrord.jetbrains.it;

import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

/**
 * The user's program of the integration tests, incoming side: an HTTP server (the JDK's) on a
 * port of the pod. Answers {@code java-local: METHOD PATH} with {@code x-served-by: java-local},
 * prints {@code listening <port>} once bound and {@code REQUEST <method> <path> <x-user>} per
 * request.
 *
 * <p>usage: StolenServer PORT
 */
public final class StolenServer {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 0);
        server.createContext("/", exchange -> {
            String method = exchange.getRequestMethod();
            String path = exchange.getRequestURI().toString();
            String user = exchange.getRequestHeaders().getFirst("x-user");
            System.out.println("REQUEST " + method + " " + path + " " + user);
            System.out.flush();
            byte[] body = ("java-local: " + method + " " + path + "\n").getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("x-served-by", "java-local");
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
        System.out.println("listening " + server.getAddress().getPort());
        System.out.flush();
    }
}
