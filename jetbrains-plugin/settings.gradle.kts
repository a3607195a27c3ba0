// The mirrord plugin for JetBrains IDEs: the platform part (this project) and the plain-Java
// core (:core), which is also built and tested without Gradle by scripts/test.sh.
rootProject.name = "mirrord-jetbrains"
include("core")
