//! The wizard's questions. Each has a flag: a flag's value is taken as it
//! is (checked, never asked again); without it the question is asked at the
//! terminal, or — with `--non-interactive` — its default is taken, and a
//! question without a default is an error naming the flag to pass.
//!
//! Plain lines in, plain lines out (no cursor movement, no raw mode): the
//! wizard works over a serial console, through `ssh -t`, and under a
//! program that answers it.

use std::io::{self, BufRead, Write};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AskError {
    #[error("{question}: pass {flag} (there is no default, and --non-interactive asks nothing)")]
    Required { question: String, flag: String },
    #[error("{flag}: {problem}")]
    BadFlag { flag: String, problem: String },
    #[error("set-up cancelled (end of input at: {question})")]
    Cancelled { question: String },
    #[error("the terminal: {0}")]
    Io(#[from] io::Error),
}

/// One question: what is asked, the flag that answers it, its default.
/// The flag's value and the default are text, read by the same parser as a
/// typed answer.
pub struct Question<'a> {
    pub text: &'a str,
    pub flag: &'a str,
    /// The flag's value, if the operator gave it.
    pub given: Option<String>,
    pub default: Option<String>,
}

/// Where the answers come from.
pub struct Asker {
    /// None: non-interactive.
    input: Option<Box<dyn BufRead>>,
    out: Box<dyn Write>,
}

impl Asker {
    /// Asks on stdin, says on stdout.
    pub fn terminal() -> Asker {
        Asker {
            input: Some(Box::new(io::BufReader::new(io::stdin()))),
            out: Box::new(io::stdout()),
        }
    }

    /// Asks nothing; says on stdout.
    pub fn non_interactive() -> Asker {
        Asker {
            input: None,
            out: Box::new(io::stdout()),
        }
    }

    pub fn interactive(&self) -> bool {
        self.input.is_some()
    }

    /// Prints `text` and a newline.
    pub fn say(&mut self, text: &str) {
        // A closed terminal must not stop the set-up half way: what it
        // does is in the files it writes.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    /// The answer to `q`, parsed and checked by `parse`: a bad typed answer
    /// is said and the question asked again; a bad flag is an error.
    pub fn value<T: std::fmt::Display>(
        &mut self,
        q: Question<'_>,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<T, AskError> {
        if let Some(given) = q.given {
            // A flag goes through the same checks as a typed answer.
            let value = parse(&given).map_err(|problem| AskError::BadFlag {
                flag: q.flag.to_string(),
                problem,
            })?;
            self.say(&format!("{}: {value} ({})", q.text, q.flag));
            return Ok(value);
        }
        if self.input.is_none() {
            let default = q.default.ok_or_else(|| AskError::Required {
                question: q.text.to_string(),
                flag: q.flag.to_string(),
            })?;
            let value = parse(&default).map_err(|problem| AskError::BadFlag {
                flag: q.flag.to_string(),
                problem: format!("its default {default} does not do: {problem}"),
            })?;
            self.say(&format!("{}: {value} (default)", q.text));
            return Ok(value);
        }
        loop {
            let line = match &q.default {
                Some(default) => self.read(&format!("{} [{default}]: ", q.text), q.text)?,
                None => self.read(&format!("{}: ", q.text), q.text)?,
            };
            let answer = match (line.as_str(), &q.default) {
                ("", Some(default)) => default.clone(),
                ("", None) => continue,
                (typed, _) => typed.to_string(),
            };
            match parse(&answer) {
                Ok(value) => return Ok(value),
                Err(problem) => self.say(&format!("  ! {problem}")),
            }
        }
    }

    /// A yes/no question: `given` is the flag's value, if any. The default
    /// shows as `[Y/n]` or `[y/N]`.
    pub fn yes_no(
        &mut self,
        text: &str,
        flag: &str,
        given: Option<bool>,
        default: Option<bool>,
    ) -> Result<bool, AskError> {
        let q = Question {
            text,
            flag,
            given: given.map(|yes| YesNo(yes).to_string()),
            default: default.map(|yes| if yes { "Y/n" } else { "y/N" }.to_string()),
        };
        self.value(q, |answer| match answer {
            "Y/n" => Ok(YesNo(true)),
            "y/N" => Ok(YesNo(false)),
            _ => match answer.to_ascii_lowercase().as_str() {
                "y" | "yes" => Ok(YesNo(true)),
                "n" | "no" => Ok(YesNo(false)),
                other => Err(format!("{other:?}: answer y or n")),
            },
        })
        .map(|YesNo(yes)| yes)
    }

    /// Prints `prompt` and reads one line (trimmed).
    fn read(&mut self, prompt: &str, question: &str) -> Result<String, AskError> {
        let _ = write!(self.out, "{prompt}");
        let _ = self.out.flush();
        let mut line = String::new();
        let input = self.input.as_mut().expect("asked interactively");
        if input.read_line(&mut line)? == 0 {
            let _ = writeln!(self.out);
            return Err(AskError::Cancelled {
                question: question.to_string(),
            });
        }
        Ok(line.trim().to_string())
    }

    /// An asker on given input and output, for tests.
    #[cfg(test)]
    fn scripted(input: &'static str, out: Box<dyn Write>) -> Asker {
        Asker {
            input: Some(Box::new(io::Cursor::new(input))),
            out,
        }
    }
}

/// A yes/no answer as the wizard prints it.
#[derive(Clone, Copy)]
struct YesNo(bool);

impl std::fmt::Display for YesNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "yes" } else { "no" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Result<u32, String> {
        text.parse::<u32>()
            .map_err(|_| format!("{text:?} is not a number"))
    }

    fn q(given: Option<u32>, default: Option<u32>) -> Question<'static> {
        Question {
            text: "How many",
            flag: "--count",
            given: given.map(|n| n.to_string()),
            default: default.map(|n| n.to_string()),
        }
    }

    #[test]
    fn a_bad_answer_is_asked_again_and_an_empty_one_takes_the_default() {
        let mut a = Asker::scripted("x\n7\n", Box::new(io::sink()));
        assert_eq!(a.value(q(None, Some(3)), number).unwrap(), 7);
        let mut a = Asker::scripted("\n", Box::new(io::sink()));
        assert_eq!(a.value(q(None, Some(3)), number).unwrap(), 3);
    }

    #[test]
    fn end_of_input_cancels() {
        let mut a = Asker::scripted("", Box::new(io::sink()));
        let e = a.value(q(None, None), number).unwrap_err();
        assert!(matches!(e, AskError::Cancelled { .. }), "{e}");
    }

    #[test]
    fn non_interactive_takes_flags_then_defaults_and_names_the_missing_flag() {
        let mut a = Asker::non_interactive();
        assert_eq!(a.value(q(Some(5), Some(3)), number).unwrap(), 5);
        assert_eq!(a.value(q(None, Some(3)), number).unwrap(), 3);
        let e = a.value(q(None, None), number).unwrap_err().to_string();
        assert!(e.contains("pass --count"), "{e}");
        let e = a
            .value(q(Some(5), None), |_| Err::<u32, _>("too big".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--count: too big");
    }

    #[test]
    fn yes_no_answers() {
        let mut a = Asker::scripted("maybe\nY\n", Box::new(io::sink()));
        assert!(a.yes_no("Go", "--go", None, Some(false)).unwrap());
        let mut a = Asker::scripted("\n", Box::new(io::sink()));
        assert!(!a.yes_no("Go", "--go", None, Some(false)).unwrap());
    }
}
