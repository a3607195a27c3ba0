package io.mirrord.jetbrains;

import com.intellij.openapi.project.Project;
import com.intellij.openapi.vfs.VirtualFile;
import com.intellij.testFramework.LightVirtualFile;
import com.jetbrains.jsonSchema.extension.JsonSchemaFileProvider;
import com.jetbrains.jsonSchema.extension.JsonSchemaProviderFactory;
import com.jetbrains.jsonSchema.extension.SchemaType;
import io.mirrord.jetbrains.core.ConfigFiles;
import io.mirrord.jetbrains.core.MirrordException;
import io.mirrord.jetbrains.core.MirrordService;
import java.util.List;
import org.jetbrains.annotations.NotNull;
import org.jetbrains.annotations.Nullable;

/**
 * The JSON Schema of mirrord's configuration files ({@code mirrord schema}, run once through
 * {@link ConfigFiles#schema}) mapped to the files {@link ConfigFiles#isConfigFile} recognises
 * ({@code .mirrord/*.json}, {@code *mirrord.json}): completion, hover and validation by the IDE's
 * own JSON support.
 */
public final class MirrordJsonSchemaProviderFactory implements JsonSchemaProviderFactory {
    @Override
    public @NotNull List<JsonSchemaFileProvider> getProviders(@NotNull Project project) {
        return List.of(new Provider(project));
    }

    private static final class Provider implements JsonSchemaFileProvider {
        private final Project project;
        private VirtualFile schema;
        private boolean failed;

        Provider(Project project) {
            this.project = project;
        }

        @Override
        public boolean isAvailable(@NotNull VirtualFile file) {
            VirtualFile parent = file.getParent();
            return ConfigFiles.isConfigFile(file.getName(), parent == null ? "" : parent.getName());
        }

        @Override
        public @NotNull String getName() {
            return "mirrord configuration";
        }

        @Override
        public synchronized @Nullable VirtualFile getSchemaFile() {
            if (schema == null && !failed) {
                try {
                    String text = ConfigFiles.schema(MirrordAppSettings.getInstance().cli());
                    schema = new LightVirtualFile("mirrord-schema.json", text);
                } catch (MirrordException e) {
                    // Told once; the files are then edited without the schema.
                    failed = true;
                    MirrordNotifier.notify(project, MirrordService.Level.WARNING,
                            "mirrord: no schema for configuration files: " + e.getMessage());
                }
            }
            return schema;
        }

        @Override
        public @NotNull SchemaType getSchemaType() {
            return SchemaType.embeddedSchema;
        }
    }
}
