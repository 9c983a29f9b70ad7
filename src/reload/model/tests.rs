//! The model replayed as sozu tests its config state: sequences of configs, each diffed against
//! what runs and carried out by the production `Running::next`, some new generations failing,
//! with the invariants and what the effective config must be checked after every step.

use std::path::Path;

use std::time::Duration;

use super::*;
use crate::config::diff;
use crate::config::{from_yaml, AppSpec};
use crate::preflight::WorkerKind;

const FILE: &str = "/srv/site/wsgimux.yaml";

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// A config drawn from the dice: up to five apps, each present or not, with one of two thread
/// counts (a restart), host lists (a re-route) and drain timeouts (an update); the admin
/// listener moves now and then (restart-only).
fn draw(dice: &mut Dice) -> Config {
    let mut yaml = format!(
        "listen: [\"127.0.0.1:{}\"]\nadmin: {{listen: \"127.0.0.1:{}\"}}\napps:\n",
        8080 + dice.roll(2),
        9180 + dice.roll(3)
    );
    for i in 0..5 {
        // app0 is always there: a config needs an app.
        if i > 0 && dice.roll(4) == 0 {
            continue;
        }
        let www = match dice.roll(2) {
            0 => format!(", www.app{i}.test"),
            _ => String::new(),
        };
        yaml.push_str(&format!(
            "  app{i}:\n    python: python3\n    script: a.wsgi\n    hosts: [app{i}.test{www}]\n    threads: {}\n    drain_timeout: {}s\n",
            1 + dice.roll(2),
            5 + dice.roll(2),
        ));
    }
    from_yaml(&yaml, Path::new(FILE)).expect("valid drawn config")
}

fn ready(config: &Config) -> HashMap<String, ReadyApp> {
    config
        .apps
        .iter()
        .map(|spec| {
            let app = ReadyApp {
                spec: spec.clone(),
                interpreter: None,
                worker: WorkerKind::Portable,
                account: None,
            };
            (spec.name.clone(), app)
        })
        .collect()
}

struct Gen(u64);

impl Identified for Gen {
    fn id(&self) -> u64 {
        self.0
    }
}

/// What each app ran before a step: its spec and generation.
type Before = HashMap<String, (AppSpec, u64)>;

/// The outcome of a step's new generations, from the dice: a quarter of the restarts fail
/// (the app keeps what it runs); added apps are kept even when they fail.
fn outcome(d: &ConfigDiff, dice: &mut Dice, next_id: &mut u64) -> Started<Gen> {
    let mut started = Started::default();
    for change in &d.apps {
        let fails = dice.roll(4) == 0;
        match change {
            AppChange::Restart { .. } if fails => {
                started.failed.insert(change.name().to_string());
            }
            AppChange::Added(_) | AppChange::Restart { .. } => {
                *next_id += 1;
                let name = change.name().to_string();
                started.generations.insert(name, Gen(*next_id));
            }
            _ => {}
        }
    }
    started
}

/// What must hold after a step, beyond the model's own rules: the file's apps in its order,
/// each as the file says unless its restart failed (then as it ran, same processes); every
/// generation that no longer runs retired once.
fn check_step(
    at: &str,
    after: &Running<Gen>,
    file: &Config,
    before: &Before,
    failed: &BTreeSet<String>,
    retired: &[(Gen, Duration)],
) {
    assert_eq!(after.problems(), Vec::<String>::new(), "{at}");
    let names: Vec<&str> = file.apps.iter().map(|a| a.name.as_str()).collect();
    let kept: Vec<&str> = after.config.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(kept, names, "{at}: the file's apps, in its order");
    for spec in &file.apps {
        let now = &after.apps[&spec.name];
        if failed.contains(&spec.name) {
            let (old_spec, old_id) = &before[&spec.name];
            assert_eq!(now.app.spec, *old_spec, "{at}: {} as it ran", spec.name);
            assert_eq!(
                now.generation.0, *old_id,
                "{at}: {} keeps its processes",
                spec.name
            );
        } else {
            assert_eq!(now.app.spec, *spec, "{at}: {} as the file says", spec.name);
        }
    }
    let live: BTreeSet<u64> = after.apps.values().map(|a| a.generation.0).collect();
    let gone: BTreeSet<u64> = before
        .values()
        .map(|(_, id)| *id)
        .filter(|id| !live.contains(id))
        .collect();
    let retired_ids: Vec<u64> = retired.iter().map(|(g, _)| g.0).collect();
    assert_eq!(retired_ids.len(), gone.len(), "{at}: retired once each");
    assert_eq!(
        retired_ids.into_iter().collect::<BTreeSet<_>>(),
        gone,
        "{at}"
    );
}

#[test]
fn every_sequence_of_configs_leaves_the_model_consistent() {
    for seed in 1..=200u64 {
        let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let first = draw(&mut dice);
        let mut next_id = 0;
        let apps = ready(&first)
            .into_iter()
            .map(|(name, app)| {
                next_id += 1;
                let app = Arc::new(app);
                (
                    name,
                    RunningApp {
                        app,
                        generation: Gen(next_id),
                    },
                )
            })
            .collect();
        let started_admin = first.admin;
        let mut running = Running {
            config: Arc::new(first),
            apps,
        };
        for step in 0..12 {
            let file = draw(&mut dice);
            let d = diff::diff(&running.config, &file);
            let before: Before = running
                .apps
                .iter()
                .map(|(n, a)| (n.clone(), (a.app.spec.clone(), a.generation.0)))
                .collect();
            let started = outcome(&d, &mut dice, &mut next_id);
            let failed = started.failed.clone();
            let retired = running.next(&file, &d, &ready(&file), started).retired;
            let at = format!("seed {seed}, step {step}");
            check_step(&at, &running, &file, &before, &failed, &retired);
            assert_eq!(
                running.config.admin, started_admin,
                "{at}: restart-only key kept"
            );
        }
    }
}

#[test]
fn an_unchanged_file_changes_nothing_but_positions() {
    let yaml = "apps:\n  a:\n    python: python3\n    script: a.wsgi\n";
    let first = from_yaml(yaml, Path::new(FILE)).expect("valid");
    let moved = from_yaml(&format!("# a comment\n{yaml}"), Path::new(FILE)).expect("valid");
    let apps = ready(&first)
        .into_iter()
        .map(|(n, app)| {
            (
                n,
                RunningApp {
                    app: Arc::new(app),
                    generation: Gen(1),
                },
            )
        })
        .collect();
    let mut running = Running {
        config: Arc::new(first),
        apps,
    };
    let d = diff::diff(&running.config, &moved);
    assert!(d.is_empty());
    let changed = running.next(&moved, &d, &HashMap::new(), Started::default());
    assert!(changed.retired.is_empty());
    assert_eq!(running.problems(), Vec::<String>::new());
    assert_eq!(
        running.apps["a"].app.spec, moved.apps[0],
        "positions follow the file"
    );
}

#[test]
fn a_broken_model_is_reported() {
    let yaml = "apps:\n  a:\n    python: python3\n    script: a.wsgi\n  b:\n    python: python3\n    script: b.wsgi\n    mount: /b\n";
    let config = from_yaml(yaml, Path::new(FILE)).expect("valid");
    let ready = ready(&config);
    let mut apps = BTreeMap::new();
    // b runs a's spec, and both run generation 1; c is not in the config.
    apps.insert(
        "a".to_string(),
        RunningApp {
            app: Arc::new(ready["a"].clone()),
            generation: Gen(1),
        },
    );
    apps.insert(
        "b".to_string(),
        RunningApp {
            app: Arc::new(ready["a"].clone()),
            generation: Gen(1),
        },
    );
    apps.insert(
        "c".to_string(),
        RunningApp {
            app: Arc::new(ready["a"].clone()),
            generation: Gen(2),
        },
    );
    let running = Running {
        config: Arc::new(config),
        apps,
    };
    let problems = running.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
}
