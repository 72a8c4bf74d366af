//! What the demo prints: numbered steps, the commands a reader could type,
//! their output. Tests run the same code quietly.

use std::cell::Cell;

pub struct Narrator {
    enabled: bool,
    step: Cell<u32>,
}

impl Narrator {
    pub fn new(enabled: bool) -> Narrator {
        Narrator {
            enabled,
            step: Cell::new(0),
        }
    }

    pub fn quiet() -> Narrator {
        Narrator::new(false)
    }

    pub fn step(&self, what: &str) {
        self.step.set(self.step.get() + 1);
        if self.enabled {
            println!("\n\x1b[1m{}. {what}\x1b[0m", self.step.get());
        }
    }

    /// The outcome of the step.
    pub fn done(&self, what: &str) {
        if self.enabled {
            println!("   \x1b[32m✓\x1b[0m {what}");
        }
    }

    pub fn detail(&self, what: &str) {
        if self.enabled {
            println!("     {what}");
        }
    }

    pub fn command(&self, shown: &str) {
        if self.enabled {
            println!("   \x1b[36m{shown}\x1b[0m");
        }
    }

    pub fn output(&self, text: &str) {
        if self.enabled {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                println!("     {line}");
            }
        }
    }
}
