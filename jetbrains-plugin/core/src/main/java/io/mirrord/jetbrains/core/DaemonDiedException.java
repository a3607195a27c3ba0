package io.mirrord.jetbrains.core;

/** mirrord-server went away (exited, or closed its output) before it answered. */
public final class DaemonDiedException extends MirrordException {
    private static final long serialVersionUID = 1L;

    public DaemonDiedException(String message) {
        super(message);
    }
}
