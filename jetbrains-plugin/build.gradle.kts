// The platform part, built with the IntelliJ Platform Gradle Plugin 2.x. Needs JetBrains'
// repositories (not reachable from the project's CI machines; see README.md).
plugins {
    java
    id("org.jetbrains.intellij.platform") version "2.2.1"
}

group = "io.mirrord"
version = providers.gradleProperty("pluginVersion").get()

java {
    toolchain {
        languageVersion.set(JavaLanguageVersion.of(17))
    }
}

repositories {
    mavenCentral()
    intellijPlatform {
        defaultRepositories()
    }
}

dependencies {
    implementation(project(":core"))
    intellijPlatform {
        create(providers.gradleProperty("platformType"), providers.gradleProperty("platformVersion"))
        // Java (run configurations), Node.js, JSON Schema: bundled with IntelliJ IDEA Ultimate.
        bundledPlugins(providers.gradleProperty("platformBundledPlugins").map { it.split(',') })
        // Python and Go come from the Marketplace for IntelliJ IDEA Ultimate.
        plugins(providers.gradleProperty("platformPlugins").map { it.split(',') })
    }
}

intellijPlatform {
    pluginConfiguration {
        id = "io.mirrord.jetbrains"
        name = "mirrord"
        version = project.version.toString()
        ideaVersion {
            sinceBuild = providers.gradleProperty("pluginSinceBuild")
            untilBuild = provider { null }
        }
    }
    // The plugin has no settings pages worth indexing for search beyond its own.
    buildSearchableOptions = false
}
