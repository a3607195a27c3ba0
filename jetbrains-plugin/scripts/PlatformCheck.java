// The platform part of the plugin cannot be compiled on machines without the IntelliJ SDK, so
// this check (run by scripts/test.sh with `java PlatformCheck.java <plugin dir>`) proves what
// can be proven without it:
//  1. every class named in plugin.xml and in the optional module XMLs it includes exists in
//     src/main/java, and every included XML exists;
//  2. every platform class uses the core (io.mirrord.jetbrains.core) and does none of the core's
//     jobs itself: no JSON-RPC method names, JSON parsing, framing or process spawning;
//  3. every platform class is reachable: named in an XML or used by another platform class;
//  4. the README's table maps every platform class to the core classes it uses.
// Exit code 0 when all hold; 1 with one line per problem otherwise.

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import javax.xml.parsers.DocumentBuilderFactory;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.NamedNodeMap;
import org.w3c.dom.NodeList;

public class PlatformCheck {
    static final String PACKAGE = "io.mirrord.jetbrains";
    static final String CORE = PACKAGE + ".core";
    /** Attributes of plugin.xml elements that name a class. */
    static final Set<String> CLASS_ATTRIBUTES = Set.of("implementation", "serviceImplementation", "serviceInterface",
            "testServiceImplementation", "factoryClass", "class", "instance", "implementationClass", "provider");
    /** What only the core may do (protocol, JSON, framing, processes). */
    static final List<String> CORE_ONLY = List.of("\"mirrord/", "\"$/progress", "ProcessBuilder", "Runtime.getRuntime",
            "com.google.gson", "Content-Length", "\"initialize\"");

    public static void main(String[] args) throws Exception {
        Path plugin = Path.of(args.length > 0 ? args[0] : ".");
        List<String> problems = check(plugin);
        for (String p : problems) {
            System.out.println("platform check: " + p);
        }
        if (!problems.isEmpty()) {
            System.exit(1);
        }
        System.out.println("platform check: ok");
    }

    static List<String> check(Path plugin) throws Exception {
        List<String> problems = new ArrayList<>();
        Path resources = plugin.resolve("src/main/resources/META-INF");
        Path sources = plugin.resolve("src/main/java");
        // 1. The XMLs and the classes they name.
        List<Path> xmls = new ArrayList<>();
        xmls.add(resources.resolve("plugin.xml"));
        Map<String, String> named = new TreeMap<>();
        for (int i = 0; i < xmls.size(); i++) {
            Path xml = xmls.get(i);
            if (!Files.isRegularFile(xml)) {
                problems.add(xml + " does not exist");
                continue;
            }
            Document doc = DocumentBuilderFactory.newInstance().newDocumentBuilder().parse(xml.toFile());
            NodeList all = doc.getElementsByTagName("*");
            for (int n = 0; n < all.getLength(); n++) {
                Element e = (Element) all.item(n);
                if (e.getTagName().equals("depends") && e.hasAttribute("config-file")) {
                    xmls.add(resources.resolve(e.getAttribute("config-file")));
                }
                NamedNodeMap attrs = e.getAttributes();
                for (int a = 0; a < attrs.getLength(); a++) {
                    String name = attrs.item(a).getNodeName();
                    String value = attrs.item(a).getNodeValue().trim();
                    if (!CLASS_ATTRIBUTES.contains(name)) {
                        continue;
                    }
                    named.put(value, xml.getFileName() + " <" + e.getTagName() + " " + name + ">");
                }
            }
        }
        if (named.isEmpty()) {
            problems.add("plugin.xml names no class");
        }
        for (Map.Entry<String, String> c : named.entrySet()) {
            String fqcn = c.getKey();
            if (!fqcn.startsWith(PACKAGE + ".") || fqcn.startsWith(CORE + ".")) {
                problems.add(c.getValue() + " names " + fqcn + ", which is not a platform class of " + PACKAGE);
                continue;
            }
            Path file = sources.resolve(fqcn.replace('.', '/') + ".java");
            if (!Files.isRegularFile(file)) {
                problems.add(c.getValue() + " names " + fqcn + ", but " + file + " does not exist");
            } else if (!Files.readString(file).contains("class " + fqcn.substring(fqcn.lastIndexOf('.') + 1))) {
                problems.add(file + " does not declare the class " + fqcn);
            }
        }
        // 2-3. Each platform class: uses the core, does not do its jobs, is reachable.
        List<Path> platform;
        try (Stream<Path> s = Files.walk(sources)) {
            platform = s.filter(p -> p.toString().endsWith(".java")).sorted().toList();
        }
        if (platform.isEmpty()) {
            problems.add("no platform classes under " + sources);
        }
        Map<String, String> texts = new TreeMap<>();
        for (Path p : platform) {
            texts.put(p.getFileName().toString().replace(".java", ""), Files.readString(p));
        }
        Pattern coreUse = Pattern.compile("\\b" + Pattern.quote(CORE) + "\\.([A-Z]\\w*)");
        Map<String, Set<String>> coreClasses = new TreeMap<>();
        for (Map.Entry<String, String> t : texts.entrySet()) {
            String cls = t.getKey();
            String text = t.getValue();
            Matcher m = coreUse.matcher(text);
            Set<String> used = new java.util.TreeSet<>();
            while (m.find()) {
                used.add(m.group(1));
            }
            coreClasses.put(cls, used);
            if (used.isEmpty()) {
                problems.add(cls + " uses no core class: the platform part must hand its decisions to " + CORE);
            }
            for (String bad : CORE_ONLY) {
                if (text.contains(bad)) {
                    problems.add(cls + " contains " + bad + ": that is the core's job");
                }
            }
            boolean reachable = named.containsKey(PACKAGE + "." + cls)
                    || texts.entrySet().stream().anyMatch(o -> !o.getKey().equals(cls)
                            && Pattern.compile("\\b" + cls + "\\b").matcher(o.getValue()).find());
            if (!reachable) {
                problems.add(cls + " is neither named in plugin.xml nor used by another platform class");
            }
        }
        // 4. The README's table: one row per platform class, naming the core classes it uses.
        Path readme = plugin.resolve("README.md");
        String text = Files.isRegularFile(readme) ? Files.readString(readme) : "";
        for (Map.Entry<String, Set<String>> c : coreClasses.entrySet()) {
            Matcher row = Pattern.compile("(?m)^\\|\\s*`" + c.getKey() + "`\\s*\\|([^\\n]*)$").matcher(text);
            if (!row.find()) {
                problems.add("README.md has no table row for " + c.getKey());
                continue;
            }
            for (String core : c.getValue()) {
                if (!row.group(1).contains("`" + core + "`")) {
                    problems.add("README.md's row for " + c.getKey() + " does not name the core class `" + core + "` it uses");
                }
            }
        }
        return problems;
    }
}
