// The core: plain Java 17, no IntelliJ dependency. scripts/test.sh builds and tests the same
// sources with javac and Debian's Gson and JUnit 5 where Gradle repositories are not reachable.
plugins {
    `java-library`
}

java {
    toolchain {
        languageVersion.set(JavaLanguageVersion.of(17))
    }
}

repositories {
    mavenCentral()
}

dependencies {
    implementation("com.google.code.gson:gson:2.10.1")
    testImplementation(platform("org.junit:junit-bom:5.9.2"))
    testImplementation("org.junit.jupiter:junit-jupiter")
    testRuntimeOnly("org.junit.platform:junit-platform-launcher")
}

tasks.test {
    useJUnitPlatform()
    // ConfigFilesTest runs `mirrord schema` of the workspace's build.
    systemProperty("mirrord.cli", rootProject.projectDir.resolve("../target/debug/mirrord").canonicalPath)
}
