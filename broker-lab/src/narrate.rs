//! What the demo prints: numbered steps, the commands a reader could type,
//! their output. Tests run the same code quietly.

use std::{cell::Cell, io::IsTerminal as _};

pub struct Narrator {
    enabled: bool,
    /// Colours only on a terminal.
    color: bool,
    step: Cell<u32>,
}

impl Narrator {
    pub fn new(enabled: bool) -> Narrator {
        Narrator {
            enabled,
            color: std::io::stdout().is_terminal(),
            step: Cell::new(0),
        }
    }

    pub fn quiet() -> Narrator {
        Narrator::new(false)
    }

    pub fn step(&self, what: &str) {
        self.step.set(self.step.get() + 1);
        if self.enabled {
            let step = format!("{}. {what}", self.step.get());
            println!("\n{}", self.paint("1", &step));
        }
    }

    /// The outcome of the step.
    pub fn done(&self, what: &str) {
        if self.enabled {
            println!("   {} {what}", self.paint("32", "✓"));
        }
    }

    pub fn detail(&self, what: &str) {
        if self.enabled {
            println!("     {what}");
        }
    }

    pub fn command(&self, shown: &str) {
        if self.enabled {
            println!("   {}", self.paint("36", shown));
        }
    }

    /// A heading outside the numbered steps.
    pub fn heading(&self, what: &str) {
        if self.enabled {
            println!("\n{}", self.paint("1", what));
        }
    }

    fn paint(&self, sgr: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
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
