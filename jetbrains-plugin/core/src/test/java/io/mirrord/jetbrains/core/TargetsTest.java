package io.mirrord.jetbrains.core;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;

class TargetsTest {
    private static final List<Api.TargetInfo> LISTED = List.of(
            new Api.TargetInfo("pid/1", true), new Api.TargetInfo("pid/2", false),
            new Api.TargetInfo("netns/a", true), new Api.TargetInfo("pid/1", true));

    @Test
    void recentTargetsComeFirstMostRecentFirstThenTheDaemonsOrder() {
        List<Targets.Item> items = Targets.order(LISTED, List.of("netns/a", "gone/x", "pid/2", "netns/a"));
        assertEquals(List.of("netns/a", "pid/2", "pid/1"), items.stream().map(Targets.Item::target).toList());
        assertEquals(List.of("most recent", "recent, not available", ""), items.stream().map(Targets.Item::description).toList());
        assertEquals(List.of(true, true, false), items.stream().map(Targets.Item::recent).toList());
        assertEquals("netns/a  (most recent)", items.get(0).label());
        assertEquals("pid/1", items.get(2).label());
    }

    @Test
    void withoutRecentTargetsTheDaemonsOrderStays() {
        List<Targets.Item> items = Targets.order(LISTED, List.of());
        assertEquals(List.of("pid/1", "pid/2", "netns/a"), items.stream().map(Targets.Item::target).toList());
        assertEquals("not available", items.get(1).description());
    }

    @Test
    void rememberMovesToTheFrontWithoutDuplicatesAndBounded() {
        assertEquals(List.of("b", "a", "c"), Targets.remember(List.of("a", "b", "c"), "b"));
        assertEquals(List.of("z", "a", "b"), Targets.remember(List.of("a", "b", "c"), "z", 3));
        List<String> many = java.util.stream.IntStream.range(0, 20).mapToObj(i -> "t" + i).toList();
        assertEquals(Targets.MAX_RECENT, Targets.remember(many, "new").size());
    }
}
