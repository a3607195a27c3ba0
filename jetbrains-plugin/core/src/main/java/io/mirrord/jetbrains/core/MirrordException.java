package io.mirrord.jetbrains.core;

/** Every failure the core reports to the platform part; the message is for a person. */
public class MirrordException extends Exception {
    private static final long serialVersionUID = 1L;

    public MirrordException(String message) {
        super(message);
    }

    public MirrordException(String message, Throwable cause) {
        super(message, cause);
    }
}
