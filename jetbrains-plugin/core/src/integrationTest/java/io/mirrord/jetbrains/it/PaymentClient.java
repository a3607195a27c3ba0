package io.mirrord.jetbrains.it;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

/**
 * The user's program of the integration tests, outgoing side: an HTTP client of a cluster
 * service by its short name (java.net.http: name lookup through getaddrinfo, a non-blocking
 * connect from NIO). Prints {@code STATUS <code>} and {@code BODY <body>}; exits non-zero on
 * failure.
 *
 * <p>usage: PaymentClient URL
 */
public final class PaymentClient {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(15))
                .build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0])).timeout(Duration.ofSeconds(20)).GET().build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println("STATUS " + response.statusCode());
        System.out.println("BODY " + response.body().trim());
        System.exit(response.statusCode() == 200 ? 0 : 1);
    }
}
