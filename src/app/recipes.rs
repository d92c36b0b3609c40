//! The class's recipe in the window: reading it when the class or the recipes folder
//! changes, writing thresholds into it, and migrating the old `./prompts` layout.

use super::*;

impl AlfaApp {
    /// The recipes folder: the class's prompt set, references and thresholds are there.
    pub fn recipes(&self) -> &Recipes {
        &self.recipes
    }

    /// Reads the current class's recipe. Its method and settings become the ones in
    /// use (what its thresholds were set with); a recipe that cannot be read is
    /// named with its line, and the app goes on without it.
    pub(super) fn read_recipe(&mut self) {
        let class = self.state.settings.class.clone();
        self.state.recipe_error = None;
        self.state.recipe = match self.recipes.read(&class) {
            Ok(recipe) => recipe,
            Err(e) => {
                self.state.recipe_error = Some(e.to_string());
                self.state.notice = Some(format!("the recipe of `{class}` is not used: {e}"));
                None
            }
        };
        let Some(method) = self.state.recipe.as_ref().and_then(|r| r.method.clone()) else { return };
        let settings = method.settings();
        let s = &mut self.state.settings;
        if s.method != method.name || s.detect != settings {
            s.method = method.name;
            s.detect = settings;
            self.scales_input = scales_text(&s.detect.scales);
            self.scales_error = None;
            self.state.notice = Some(format!(
                "method and settings from the recipe of `{class}`: {}, scales {}",
                widgets::method_label(method.name),
                scales_text(&method.scales)
            ));
        }
    }

    /// Another recipes folder (Settings): the class's prompt set, references and
    /// thresholds are read from it.
    pub fn set_recipes_dir(&mut self, dir: &str) {
        match locate_recipes(dir) {
            Ok(recipes) => {
                self.state.settings.recipes = dir.trim().to_owned();
                self.prompts = PromptStore::in_recipes(&recipes);
                self.recipes = recipes;
                self.recipe_to_write = None;
                self.find_legacy();
                self.reload_class();
                self.state.notice = Some(format!("recipes in {}", self.recipes.root.display()));
            }
            Err(e) => self.state.notice = Some(e.to_string()),
        }
    }

    /// Reads the class's prompt set, recipe and references again (unsaved prompt
    /// edits are kept for when the class comes back, as on a class switch).
    pub(super) fn reload_class(&mut self) {
        let class = self.state.settings.class.clone();
        if !self.editor.as_ref().is_some_and(|e| e.unsaved && e.applied.class.id == class) {
            match self.prompts.resolve(&class) {
                Ok(resolved) => self.editor = Some(PromptEditor::new(resolved)),
                Err(e) => self.state.notice = Some(format!("cannot read the prompts of `{class}`: {e}")),
            }
        }
        self.read_recipe();
        self.refresh_reference_views();
        self.analyse_all();
    }

    /// Looks for class files of the old layout (`./prompts`) that the recipes lack.
    pub(super) fn find_legacy(&mut self) {
        self.state.legacy = legacy::find(std::path::Path::new(LEGACY_DIR), &self.recipes).into_iter().filter(|c| !c.settled()).collect();
    }

    /// Copies the old layout's class files into the recipes (the originals stay) and
    /// reads the class again.
    pub fn migrate_legacy(&mut self) {
        match legacy::migrate(std::path::Path::new(LEGACY_DIR), &self.recipes, false) {
            Ok(done) => {
                let skipped = done.skipped.first().map(|(f, why)| format!("; left {}: {why}", f.display())).unwrap_or_default();
                self.state.notice = Some(format!(
                    "copied {} file(s) from {LEGACY_DIR}/ into {} (the originals stay){skipped}",
                    done.copied.len(),
                    self.recipes.root.display()
                ));
                self.state.legacy.clear();
                self.reload_class();
            }
            Err(e) => self.state.notice = Some(format!("migration failed: {e}")),
        }
    }

    /// "Not now": the offer goes until the next start.
    pub fn dismiss_legacy(&mut self) {
        self.state.legacy.clear();
    }

    /// Makes `thresholds` the class's: into its recipe (written when the pointer is
    /// released), or, before the model is loaded, into it once it is.
    pub fn set_thresholds(&mut self, thresholds: state::Thresholds) {
        if let Some(recipe) = self.state.set_thresholds(thresholds) {
            self.recipe_to_write = Some(recipe);
        }
    }

    /// Writes the recipe a threshold changed, once no slider is held.
    pub(super) fn write_recipe(&mut self, ctx: &egui::Context) {
        if self.recipe_to_write.is_none() || ctx.input(|i| i.pointer.any_down()) {
            return;
        }
        let Some(recipe) = self.recipe_to_write.take() else { return };
        if let Err(e) = self.recipes.write(&recipe) {
            self.state.notice = Some(format!("the thresholds are not saved: {e}"));
        }
    }
}

/// The recipes folder Settings name (`--recipes`), or `$ALFA_RECIPES`, or the default.
pub(super) fn locate_recipes(dir: &str) -> Result<Recipes, crate::recipe::RecipeError> {
    let dir = dir.trim();
    Recipes::locate((!dir.is_empty()).then(|| std::path::Path::new(dir)))
}
