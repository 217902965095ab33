//! A small command-line parser: a subcommand, positional arguments, and
//! `--name value` options. Flags are the few names in [`FLAGS`].

use std::collections::HashMap;
use std::str::FromStr;

const FLAGS: &[&str] = &["once", "udp", "quick"];

pub struct Args {
    pub command: String,
    positional: Vec<String>,
    options: HashMap<String, String>,
}

impl Args {
    pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let command = argv.next().unwrap_or_default();
        let mut positional = Vec::new();
        let mut options = HashMap::new();
        while let Some(arg) = argv.next() {
            match arg.strip_prefix("--") {
                Some(name) if FLAGS.contains(&name) => {
                    options.insert(name.to_string(), String::new());
                }
                Some(name) => {
                    let value = argv
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    options.insert(name.to_string(), value);
                }
                None => positional.push(arg),
            }
        }
        Ok(Args {
            command,
            positional,
            options,
        })
    }

    pub fn positional(&self, index: usize, what: &str) -> Result<&str, String> {
        self.positional
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| format!("missing {what}"))
    }

    pub fn positional_count(&self) -> usize {
        self.positional.len()
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.value(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.options.contains_key(name)
    }

    pub fn number<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.value(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{name} {text}: not a number")),
        }
    }
}
