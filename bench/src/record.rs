//! One measured figure, as a line of tab-separated fields:
//!
//! `test  concurrency  server  value  p50_us  p99_us  errors  note`
//!
//! `value` is operations per second for the load tests, KiB for `rss-idle`
//! and bytes per held connection for `rss-conn`. Latencies are 0 where they
//! do not apply. Lines, not a structured format, so that rounds can simply
//! be appended to one file by a shell script.

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub test: String,
    pub concurrency: usize,
    pub server: String,
    pub value: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub note: String,
}

impl Record {
    pub fn print(&self) {
        let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        println!(
            "{}\t{}\t{}\t{:.3}\t{:.1}\t{:.1}\t{}\t{}",
            clean(&self.test),
            self.concurrency,
            clean(&self.server),
            self.value,
            self.p50_us,
            self.p99_us,
            self.errors,
            clean(&self.note)
        );
    }

    pub fn parse(line: &str) -> Result<Record, String> {
        let f: Vec<&str> = line.splitn(8, '\t').collect();
        if f.len() < 7 {
            return Err(format!("not a record: {line:?}"));
        }
        let num = |i: usize| -> Result<f64, String> {
            f[i].parse()
                .map_err(|_| format!("field {} is not a number: {line:?}", i + 1))
        };
        Ok(Record {
            test: f[0].to_string(),
            concurrency: num(1)? as usize,
            server: f[2].to_string(),
            value: num(3)?,
            p50_us: num(4)?,
            p99_us: num(5)?,
            errors: num(6)? as u64,
            note: f.get(7).unwrap_or(&"").to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Record {
            test: "help".into(),
            concurrency: 8,
            server: "tcpmuxd".into(),
            value: 1234.5,
            p50_us: 80.0,
            p99_us: 900.0,
            errors: 2,
            note: "2x connection refused".into(),
        };
        let line = "help\t8\ttcpmuxd\t1234.500\t80.0\t900.0\t2\t2x connection refused";
        assert_eq!(Record::parse(line), Ok(r));
    }
}
