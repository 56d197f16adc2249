//! Network profiles for `--network`: host classes (uplink and downlink
//! rate, incoming loss, share of the receivers, join order) and which class
//! the supervisor and the broadcaster use. The built-in profiles (`lan`,
//! `office`, `home`) are constants of the same type a TOML file is read
//! into. Pure: no IO beyond reading the profile file.
//!
//! A profile file (see `config/network.example.toml`):
//!
//! ```toml
//! name = "my-office"          # optional: the file's stem by default
//! supervisor = "server"       # the class of the supervisor's host
//! broadcaster = "server"      # the class of the broadcaster's host
//!
//! [[class]]
//! name = "wifi"
//! uplink = "2 Mbit/s"         # optional: unshaped without it
//! downlink = "20 Mbit/s"      # optional
//! loss = 0.01                 # incoming UDP dropped (0 to < 1; default 0)
//! share = 0.375               # of the receivers (receiver classes sum to 1)
//! join = "first"              # first | any | last (default any)
//! ```

use std::borrow::Cow;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};

/// When a class's receivers join, relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// Before every other receiver (the lab waits until they joined).
    First,
    /// After `first`, before `last`.
    #[default]
    Any,
    /// After every other receiver joined.
    Last,
}

/// One kind of host.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostClass {
    /// Its name (reported per host).
    pub name: Cow<'static, str>,
    /// Egress rate of the host's own interface, bit/s (`None`: unshaped).
    #[serde(default, deserialize_with = "rate")]
    pub uplink: Option<u64>,
    /// Rate towards the host (the switch port's egress), bit/s.
    #[serde(default, deserialize_with = "rate")]
    pub downlink: Option<u64>,
    /// Share of incoming UDP datagrams dropped, 0 to < 1.
    #[serde(default)]
    pub loss: f64,
    /// Fraction of the receivers on hosts of this class.
    #[serde(default)]
    pub share: f64,
    /// When its receivers join.
    #[serde(default)]
    pub join: Join,
}

/// A network: host classes and the servers' classes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Its name (recorded in `results.csv`).
    #[serde(default)]
    pub name: Cow<'static, str>,
    /// The class of the supervisor's host.
    pub supervisor: Cow<'static, str>,
    /// The class of the broadcaster's host.
    pub broadcaster: Cow<'static, str>,
    /// The host classes.
    #[serde(rename = "class")]
    pub classes: Cow<'static, [HostClass]>,
}

const MBIT: u64 = 1_000_000;

const fn class(
    name: &'static str,
    uplink: Option<u64>,
    downlink: Option<u64>,
    loss: f64,
    share: f64,
    join: Join,
) -> HostClass {
    HostClass {
        name: Cow::Borrowed(name),
        uplink,
        downlink,
        loss,
        share,
        join,
    }
}

/// `lan`: every host unshaped, no loss (bare namespaces on one bridge).
pub const LAN: Profile = Profile {
    name: Cow::Borrowed("lan"),
    supervisor: Cow::Borrowed("wired"),
    broadcaster: Cow::Borrowed("wired"),
    classes: Cow::Borrowed(&[class("wired", None, None, 0.0, 1.0, Join::Any)]),
};

/// `office`: 3/8 of the receivers on Wi-Fi-like hosts (2 Mbit/s up, 20
/// Mbit/s down: uplinks near the ~1.2 Mbit/s stream) that join first, the
/// rest wired (100 Mbit/s both ways); 1 % of incoming UDP lost on every
/// receiver host. The supervisor and the broadcaster are wired servers
/// (100 Mbit/s, no loss).
pub const OFFICE: Profile = Profile {
    name: Cow::Borrowed("office"),
    supervisor: Cow::Borrowed("server"),
    broadcaster: Cow::Borrowed("server"),
    classes: Cow::Borrowed(&[
        class(
            "wifi",
            Some(2 * MBIT),
            Some(20 * MBIT),
            0.01,
            0.375,
            Join::First,
        ),
        class(
            "wired",
            Some(100 * MBIT),
            Some(100 * MBIT),
            0.01,
            0.625,
            Join::Any,
        ),
        class(
            "server",
            Some(100 * MBIT),
            Some(100 * MBIT),
            0.0,
            0.0,
            Join::Any,
        ),
    ]),
};

/// `home`: asymmetric consumer links — uplinks of 1, 2, 3, 4 and 5 Mbit/s
/// (a fifth of the receivers each, interleaved in join order) with
/// downlinks of 20 to 50 Mbit/s, 2 % of incoming UDP lost; the supervisor
/// and the broadcaster are wired servers (100 Mbit/s, no loss).
pub const HOME: Profile = Profile {
    name: Cow::Borrowed("home"),
    supervisor: Cow::Borrowed("server"),
    broadcaster: Cow::Borrowed("server"),
    classes: Cow::Borrowed(&[
        class("dsl1", Some(MBIT), Some(20 * MBIT), 0.02, 0.2, Join::Any),
        class(
            "dsl2",
            Some(2 * MBIT),
            Some(25 * MBIT),
            0.02,
            0.2,
            Join::Any,
        ),
        class(
            "cable3",
            Some(3 * MBIT),
            Some(30 * MBIT),
            0.02,
            0.2,
            Join::Any,
        ),
        class(
            "cable4",
            Some(4 * MBIT),
            Some(40 * MBIT),
            0.02,
            0.2,
            Join::Any,
        ),
        class(
            "fiber5",
            Some(5 * MBIT),
            Some(50 * MBIT),
            0.02,
            0.2,
            Join::Any,
        ),
        class(
            "server",
            Some(100 * MBIT),
            Some(100 * MBIT),
            0.0,
            0.0,
            Join::Any,
        ),
    ]),
};

/// The built-in profiles.
pub const BUILT_IN: [&Profile; 3] = [&LAN, &OFFICE, &HOME];

/// Parses a rate: a number with a unit `bit`, `kbit`, `Mbit` or `Gbit`
/// (any case, an optional `/s`, spaces allowed), e.g. `"2 Mbit/s"`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("rate {text:?} has no unit (e.g. \"2 Mbit/s\")"))?;
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("rate {text:?}: {number:?} is not a number"))?;
    let scale = match unit.trim() {
        "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        other => {
            return Err(format!(
                "rate {text:?}: unknown unit {other:?} (expected bit, kbit, Mbit or Gbit)"
            ))
        }
    };
    let bits = (number * scale).round();
    if !(8000.0..=100e9).contains(&bits) {
        return Err(format!(
            "rate {text:?} is out of range (8 kbit/s to 100 Gbit/s)"
        ));
    }
    Ok(bits as u64)
}

fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_rate(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A rate for people: `2 Mbit/s`, `500 kbit/s`, or `unshaped`.
pub fn show_rate(rate: Option<u64>) -> String {
    match rate {
        None => "unshaped".into(),
        Some(r) if r % MBIT == 0 => format!("{} Mbit/s", r / MBIT),
        Some(r) if r >= MBIT => format!("{:.1} Mbit/s", r as f64 / 1e6),
        Some(r) => format!("{} kbit/s", r / 1000),
    }
}

impl Profile {
    /// `lan`, `office`, `home`, or the path of a TOML profile file.
    pub fn load(arg: &str) -> anyhow::Result<Profile> {
        if let Some(p) = BUILT_IN.iter().find(|p| p.name == arg) {
            return Ok((*p).clone());
        }
        let path = Path::new(arg);
        if !path.is_file() {
            bail!("unknown network profile {arg:?} (expected lan, office, home or a TOML file)");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "custom".into());
        Self::parse(&text, &stem).with_context(|| format!("network profile {}", path.display()))
    }

    /// Parses and checks a profile's TOML; `default_name` names it if the
    /// file does not.
    pub fn parse(text: &str, default_name: &str) -> anyhow::Result<Profile> {
        let mut p: Profile = toml::from_str(text).map_err(|e| {
            // toml's message spans lines (it quotes the source): keep it
            // to one line.
            let msg = e.message().to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    anyhow::anyhow!("line {line}: {msg}")
                }
                None => anyhow::anyhow!("{msg}"),
            }
        })?;
        if p.name.is_empty() {
            p.name = Cow::Owned(default_name.to_owned());
        }
        p.validate()?;
        Ok(p)
    }

    /// Checks the values: names unique and usable, loss in [0, 1), shares
    /// of the receiver classes summing to 1, the servers' classes defined.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "profile name {:?}: use letters, digits, '-', '_' or '.'",
                self.name
            );
        }
        if self.classes.is_empty() {
            bail!("no host class ([[class]])");
        }
        for (i, c) in self.classes.iter().enumerate() {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
            {
                bail!("class name {:?}: use letters, digits, '-' or '_'", c.name);
            }
            if self.classes[..i].iter().any(|o| o.name == c.name) {
                bail!("class {:?} is defined twice", c.name);
            }
            if !(0.0..1.0).contains(&c.loss) {
                bail!(
                    "class {:?}: loss {} must be at least 0 and below 1",
                    c.name,
                    c.loss
                );
            }
            if !(0.0..=1.0).contains(&c.share) {
                bail!(
                    "class {:?}: share {} must be between 0 and 1",
                    c.name,
                    c.share
                );
            }
        }
        let total: f64 = self.classes.iter().map(|c| c.share).sum();
        if (total - 1.0).abs() > 1e-6 {
            bail!("the shares of the classes add up to {total}, not 1");
        }
        for (role, name) in [
            ("supervisor", &self.supervisor),
            ("broadcaster", &self.broadcaster),
        ] {
            if self.class(name).is_none() {
                bail!("{role} = {name:?} is not a class of this profile");
            }
        }
        Ok(())
    }

    /// A class by name.
    pub fn class(&self, name: &str) -> Option<&HostClass> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// The supervisor's class.
    pub fn supervisor_class(&self) -> &HostClass {
        self.class(&self.supervisor)
            .unwrap_or_else(|| &self.classes[0])
    }

    /// The broadcaster's class.
    pub fn broadcaster_class(&self) -> &HostClass {
        self.class(&self.broadcaster)
            .unwrap_or_else(|| &self.classes[0])
    }

    /// The class of every receiver slot, in join order: slot 0 joins
    /// first. Each class gets its share of `receivers` (largest
    /// remainder); classes joining `first` take the lowest slots, then
    /// `any`, then `last`; within one join group the classes are
    /// interleaved (smooth weighted round robin), so e.g. `home`'s 1 to 5
    /// Mbit/s uplinks are spread over the join order. Deterministic.
    pub fn assign(&self, receivers: usize) -> Vec<&HostClass> {
        let exact: Vec<f64> = self
            .classes
            .iter()
            .map(|c| c.share * receivers as f64)
            .collect();
        let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
        let mut left = receivers.saturating_sub(counts.iter().sum());
        let mut order: Vec<usize> = (0..counts.len()).collect();
        // Largest remainder first; ties by class order.
        order.sort_by(|&a, &b| {
            (exact[b] - exact[b].floor())
                .total_cmp(&(exact[a] - exact[a].floor()))
                .then(a.cmp(&b))
        });
        for &i in order.iter().cycle().take(counts.len() * 2) {
            if left == 0 {
                break;
            }
            if self.classes[i].share > 0.0 {
                counts[i] += 1;
                left -= 1;
            }
        }
        let mut slots = Vec::with_capacity(receivers);
        for join in [Join::First, Join::Any, Join::Last] {
            let members: Vec<usize> = (0..counts.len())
                .filter(|&i| self.classes[i].join == join && counts[i] > 0)
                .collect();
            let total: usize = members.iter().map(|&i| counts[i]).sum();
            let mut current = vec![0i64; members.len()];
            let mut given = vec![0usize; members.len()];
            for _ in 0..total {
                let mut best = None;
                for (k, &i) in members.iter().enumerate() {
                    if given[k] == counts[i] {
                        continue;
                    }
                    current[k] += counts[i] as i64;
                    if best.is_none_or(|b: usize| current[k] > current[b]) {
                        best = Some(k);
                    }
                }
                let Some(b) = best else { break };
                current[b] -= total as i64;
                given[b] += 1;
                slots.push(&self.classes[members[b]]);
            }
        }
        slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_profiles_are_valid() {
        for p in BUILT_IN {
            p.validate().unwrap_or_else(|e| panic!("{}: {e:#}", p.name));
            assert_eq!(&Profile::load(&p.name).expect("built in"), p);
        }
        assert!(LAN
            .classes
            .iter()
            .all(|c| c.uplink.is_none() && c.loss == 0.0));
        let office = OFFICE;
        let wifi = office.class("wifi").expect("wifi");
        assert_eq!((wifi.uplink, wifi.join), (Some(2_000_000), Join::First));
        assert!(HOME.classes.iter().filter(|c| c.share > 0.0).all(
            |c| c.loss == 0.02 && (1_000_000..=5_000_000).contains(&c.uplink.expect("shaped"))
        ));
        assert_eq!(OFFICE.broadcaster_class().loss, 0.0);
    }

    #[test]
    fn office_puts_three_eighths_on_wifi_and_they_join_first() {
        let office = OFFICE;
        let slots = office.assign(8);
        let names: Vec<&str> = slots.iter().map(|c| &*c.name).collect();
        assert_eq!(
            names,
            ["wifi", "wifi", "wifi", "wired", "wired", "wired", "wired", "wired"]
        );
        assert_eq!(OFFICE.assign(83).len(), 83);
        assert_eq!(
            OFFICE
                .assign(83)
                .iter()
                .filter(|c| c.name == "wifi")
                .count(),
            31
        );
        assert!(OFFICE.assign(0).is_empty());
        assert_eq!(OFFICE.assign(1).len(), 1);
    }

    #[test]
    fn home_spreads_its_uplinks_over_the_join_order() {
        let home = HOME;
        let slots = home.assign(10);
        let ups: Vec<u64> = slots
            .iter()
            .map(|c| c.uplink.expect("shaped") / MBIT)
            .collect();
        assert_eq!(ups.len(), 10);
        for r in 1..=5 {
            assert_eq!(ups.iter().filter(|&&u| u == r).count(), 2, "{ups:?}");
        }
        assert_ne!(&ups[..2], &[1, 1], "interleaved, not in blocks: {ups:?}");
        assert_eq!(slots, HOME.assign(10), "deterministic");
    }

    #[test]
    fn a_toml_profile_is_read_and_checked() {
        let p = Profile::parse(
            r#"
            supervisor = "srv"
            broadcaster = "srv"
            [[class]]
            name = "slow"
            uplink = "1.5 Mbit/s"
            loss = 0.05
            share = 0.25
            join = "last"
            [[class]]
            name = "fast"
            uplink = "800kbit"
            downlink = "1 Gbit"
            share = 0.75
            [[class]]
            name = "srv"
            "#,
            "mine",
        )
        .expect("valid");
        assert_eq!(p.name, "mine");
        let slow = p.class("slow").expect("slow");
        assert_eq!((slow.uplink, slow.downlink), (Some(1_500_000), None));
        assert_eq!((slow.loss, slow.join), (0.05, Join::Last));
        let fast = p.class("fast").expect("fast");
        assert_eq!(
            (fast.uplink, fast.downlink, fast.join),
            (Some(800_000), Some(1_000_000_000), Join::Any)
        );
        let names: Vec<&str> = p.assign(4).iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["fast", "fast", "fast", "slow"], "last joins last");
        assert_eq!(p.supervisor_class().uplink, None);
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let base = "supervisor = \"a\"\nbroadcaster = \"a\"\n[[class]]\nname = \"a\"\nshare = 1\n";
        let err = |text: &str| {
            format!(
                "{:#}",
                Profile::parse(text, "x").expect_err("must be refused")
            )
        };
        let e = err(&format!("{base}uplnk = \"2 Mbit/s\"\n"));
        assert!(
            e.contains("unknown field `uplnk`") && e.contains("line 6"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let e = err(&format!("{base}uplink = \"2 parsecs\"\n"));
        assert!(e.contains("unknown unit \"parsecs\""), "{e}");
        let e = err(&format!("{base}uplink = \"fast\"\n"));
        assert!(e.contains("fast"), "{e}");
        let e = err(&format!("{base}loss = 1.5\n"));
        assert!(e.contains("loss 1.5"), "{e}");
        let e = err(&format!("{base}join = \"never\"\n"));
        assert!(e.contains("never"), "{e}");
        let e = err(&base.replace("share = 1", "share = 0.5"));
        assert!(e.contains("add up to 0.5"), "{e}");
        let e = err(&base.replace("broadcaster = \"a\"", "broadcaster = \"b\""));
        assert!(e.contains("broadcaster = \"b\""), "{e}");
        let e = err(&format!("colour = \"red\"\n{base}"));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = format!(
            "{:#}",
            Profile::load("/nonexistent/net.toml").expect_err("no file")
        );
        assert!(e.contains("unknown network profile"), "{e}");
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(parse_rate("2 Mbit/s"), Ok(2_000_000));
        assert_eq!(parse_rate("2mbit"), Ok(2_000_000));
        assert_eq!(parse_rate("500 kbit"), Ok(500_000));
        assert!(parse_rate("2").is_err());
        assert!(parse_rate("1 bit").is_err(), "too slow to be real");
        assert_eq!(show_rate(Some(2_000_000)), "2 Mbit/s");
        assert_eq!(show_rate(Some(1_500_000)), "1.5 Mbit/s");
        assert_eq!(show_rate(Some(800_000)), "800 kbit/s");
        assert_eq!(show_rate(None), "unshaped");
    }
}
