#!/usr/bin/env bash
# The JetBrains plugin's tests that run on these machines: compiles core/ with javac (Debian's
# JDK 17, Gson and JUnit 5, installed when missing), runs its unit tests, checks that every
# class the plugin's XML names exists and that each platform class uses the core, then runs the
# integration tests against the real mirrord-server on the simulated cluster
# (tests/tests/jetbrains.rs). The platform part itself needs the IntelliJ SDK and is not
# compiled here (see jetbrains-plugin/README.md).
#
# Run from anywhere; needs `cargo build --workspace` done (target/debug/mirrord-server, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PLUGIN=$ROOT/jetbrains-plugin
J=/usr/share/java

missing=()
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
[ -f $J/junit-platform-console-standalone.jar ] || missing+=(junit5)
[ -f $J/gson.jar ] || missing+=(libgoogle-gson-java)
if [ ${#missing[@]} -gt 0 ]; then
    echo "jetbrains-plugin: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

JAVA=$(command -v java)
JAVAC=$(command -v javac)
"$JAVAC" -version 2>&1 | grep -q 'javac 1[7-9]\|javac 2[0-9]' || { echo "javac 17 or newer is needed: $("$JAVAC" -version 2>&1)"; exit 1; }

OUT=$ROOT/target/jetbrains-plugin
rm -rf "$OUT"
mkdir -p "$OUT"
JUNIT_API=$J/junit-jupiter-api.jar:$J/apiguardian-api.jar:$J/opentest4j.jar:$J/junit-platform-commons.jar
CORE=$PLUGIN/core/src

echo "== jetbrains-plugin: compiling core (javac --release 17)"
"$JAVAC" --release 17 -Xlint:all -Werror -encoding UTF-8 -d "$OUT/main" -cp $J/gson.jar \
    $(find "$CORE/main" -name '*.java' | sort)
"$JAVAC" --release 17 -Xlint:all -Werror -encoding UTF-8 -d "$OUT/test" -cp "$OUT/main:$J/gson.jar:$JUNIT_API" \
    $(find "$CORE/test" -name '*.java' | sort)
"$JAVAC" --release 17 -Xlint:all -Werror -encoding UTF-8 -d "$OUT/it" -cp "$OUT/main:$OUT/test:$J/gson.jar:$JUNIT_API" \
    $(find "$CORE/integrationTest" -name '*.java' | sort)

echo "== jetbrains-plugin: platform check (plugin.xml classes exist and use the core)"
"$JAVA" "$PLUGIN/scripts/PlatformCheck.java" "$PLUGIN"
# The check can fail: a copy without a class plugin.xml names, and with a platform class that
# does a core job, must be refused.
BROKEN=$OUT/broken-plugin
mkdir -p "$BROKEN"
cp -r "$PLUGIN/src" "$PLUGIN/README.md" "$BROKEN/"
rm "$BROKEN/src/main/java/io/mirrord/jetbrains/MirrordToggleAction.java"
echo 'class Sneaky { String m = "mirrord/startSession"; }' >> "$BROKEN/src/main/java/io/mirrord/jetbrains/MirrordNotifier.java"
if "$JAVA" "$PLUGIN/scripts/PlatformCheck.java" "$BROKEN" > "$OUT/broken.txt"; then
    echo "the platform check accepted a broken plugin"; exit 1
fi
grep -q 'MirrordToggleAction.java does not exist' "$OUT/broken.txt" \
    && grep -q 'MirrordNotifier contains "mirrord/' "$OUT/broken.txt" \
    || { echo "the platform check missed a problem:"; cat "$OUT/broken.txt"; exit 1; }

echo "== jetbrains-plugin: unit tests"
[ -x "$ROOT/target/debug/mirrord" ] || { echo "target/debug/mirrord is missing: run cargo build --workspace first"; exit 1; }
"$JAVA" -Dmirrord.cli="$ROOT/target/debug/mirrord" -jar $J/junit-platform-console-standalone.jar --disable-banner --details=summary --fail-if-no-tests \
    --class-path "$OUT/main:$OUT/test:$J/gson.jar" --scan-class-path "$OUT/test"

echo "== jetbrains-plugin: integration tests (real mirrord-server on the simulated cluster)"
MIRRORD_JB_JAVA=$JAVA \
MIRRORD_JB_JUNIT=$J/junit-platform-console-standalone.jar \
MIRRORD_JB_CLASSPATH="$OUT/main:$OUT/test:$OUT/it:$J/gson.jar" \
MIRRORD_JB_PROGRAMS_CP="$OUT/it" \
    cargo test -p mirrord-tests --test jetbrains -- --ignored --test-threads=1
