//! LLM prompt generation against an OpenAI-compatible server the test runs on loopback.
//!
//! The server (`common::llm_server`) is a std `TcpListener` thread: every test scripts
//! its answers and reads back the requests it got.

mod common;

use common::llm_server::{Reply, Server};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alfa::clip::ClipTokenizer;
use alfa::prompts::PromptSet;
use alfa::prompts::generate::{self, CLIP_CONTEXT, ClassPlan, GenerateError, GenerateEvent};
use alfa::prompts::llm::{LlmApi, LlmClient, LlmConfig};

/// Answers as a chatty LLM would: boilerplate, markdown, one duplicate, one prompt of the
/// wrong label, one prompt over CLIP's context, and one prompt the user already has.
fn llm_answer(question: &str) -> String {
    let long = format!("A normal image of bottle shows {}.", vec!["a very smooth round rim"; 20].join(" and "));
    if question.contains("An abnormal image of bottle") {
        "Here are some ways:\n\n1. **An abnormal image of bottle** shows a chipped rim.\n\
         2) An abnormal image of a bottle has \"dirt\" inside.\n\
         3. A normal image of bottle is clean.\n\
         4. An anomalous bottle has a crack in the neck."
            .into()
    } else if question.contains("A normal image of bottle") {
        format!(
            "Sure! Here are answers:\n- A normal image of bottle shows a round rim.\n\
             * a NORMAL image of Bottle  shows a round rim.\n\
             • A normal image of bottle was written by hand.\n\
             - {long}\n\
             - An abnormal image of bottle has a crack.\n\
             I hope this helps!"
        )
    } else if question.contains("anomaly bottle") {
        "- glass shard inside the bottle\n- \"chipped rim\"\n- Chipped   rim".into()
    } else {
        "- An answer about another class\n- and another one".into()
    }
}

/// A prompt folder holding `bottle.toml`: the shipped set plus a prompt added by hand and a comment.
fn folder_with_hand_edited_bottle() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (_, shipped) = alfa::prompts::PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
    let edited = shipped
        .replacen("normal = [\n", "normal = [\n    # my own prompts\n    \"A normal image of {c} was written by hand.\",\n", 1);
    assert_ne!(edited, shipped);
    let path = dir.path().join("bottle.toml");
    std::fs::write(&path, edited).unwrap();
    (dir, path)
}

fn tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_file(&common::shared_tokenizer(), CLIP_CONTEXT).unwrap()
}

fn config(server_url: &str) -> LlmConfig {
    LlmConfig {
        base_url: server_url.to_owned(),
        model: "test-model".into(),
        api_key_env: "ALFA_TEST_NO_SUCH_KEY_VARIABLE".into(),
        timeout_ms: 5000,
        initial_backoff_ms: 10,
        ..LlmConfig::default()
    }
}

fn plan(config: LlmConfig, dir: &Path, class: &str, samples: usize) -> (Result<ClassPlan, GenerateError>, Vec<GenerateEvent>) {
    let client = LlmClient::new(config).unwrap();
    let mut events = Vec::new();
    let file = alfa::prompts::set::file_for(dir, class);
    let result = generate::plan_class(&client, &tokenizer(), &file, class, samples, &mut |e| events.push(e));
    (result, events)
}

#[test]
fn generated_prompts_are_merged_into_the_users_file() {
    let server = Server::start(|request, _| Reply::chat(&llm_answer(&request.question())));
    let (dir, path) = folder_with_hand_edited_bottle();
    let before = PromptSet::from_file(&path).unwrap();
    let (result, events) = plan(config(&server.base_url), dir.path(), "bottle", 2);
    let plan = result.unwrap();
    plan.update.write().unwrap();

    let after_text = std::fs::read_to_string(&path).unwrap();
    let after = PromptSet::from_file(&path).unwrap();
    assert!(after_text.contains("# my own prompts"), "comments survive");
    // Every prompt that was there stays, in order; only the new ones follow.
    assert_eq!(&after.llm.normal[..before.llm.normal.len()], &before.llm.normal[..]);
    assert_eq!(&after.llm.normal[before.llm.normal.len()..], ["A normal image of {c} shows a round rim."]);
    assert_eq!(&after.llm.abnormal[..before.llm.abnormal.len()], &before.llm.abnormal[..]);
    assert_eq!(
        &after.llm.abnormal[before.llm.abnormal.len()..],
        [
            "An abnormal image of {c} shows a chipped rim.",
            "An abnormal image of {c} has \"dirt\" inside.",
            "An abnormal image of {c} has a crack in the neck.",
        ]
    );
    let new_descriptors = &after.descriptors.abnormal[before.descriptors.abnormal.len()..];
    assert_eq!(new_descriptors, ["glass shard inside the {c}", "chipped rim"]);
    // Provenance: model, endpoint, date, queries.
    assert!(after.llm.source.starts_with(&before.llm.source), "{}", after.llm.source);
    assert!(after.llm.source.contains("test-model"), "{}", after.llm.source);
    assert!(after.llm.source.contains(&format!("{}/chat/completions", server.base_url)));
    let year = alfa::time::utc_date(std::time::SystemTime::now())[..4].to_owned();
    assert!(after.llm.source.contains(&year), "{}", after.llm.source);
    for query in [generate::NORMAL_QUERY, generate::ABNORMAL_QUERY] {
        assert!(after.llm.queries.iter().any(|q| q == query), "{query} recorded");
    }
    assert_eq!(after.descriptors.query, generate::DESCRIPTOR_QUERY);

    // The filters fired for the reasons planted in the answers (2 samples each).
    let d = plan.generated.dropped;
    assert_eq!(d.too_long, 2);
    assert_eq!(d.wrong_beginning, 4, "a normal prompt under abnormal and vice versa, twice");
    assert!(d.duplicates >= 3, "{d:?}");
    // 2 samples x 3 queries, each reported.
    let answered = events.iter().filter(|e| matches!(e, GenerateEvent::Answered { .. })).count();
    assert_eq!(answered, 6);
    assert_eq!(server.requests().len(), 6);
    let request = &server.requests()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.body["model"], "test-model");
    assert_eq!(request.authorization, None, "no key variable set, no header");
    let question = request.question();
    assert!(question.contains("A normal image of bottle") && !question.contains("{c}"), "{question}");

    // The merged file expands with the class name filled in.
    let expanded = after.expand();
    assert!(expanded.normal.iter().any(|p| p.text == "A normal image of bottle shows a round rim."));
}

#[test]
fn a_new_file_starts_from_the_generic_set_renamed() {
    let server = Server::start(|request, _| {
        let q = request.question();
        let answer = if q.contains("An abnormal image of gear wheel") {
            "- An abnormal image of gear wheel has a broken tooth."
        } else if q.contains("A normal image of gear wheel") {
            "- A normal image of a gear wheel has even teeth."
        } else {
            "- missing tooth on the gear wheel"
        };
        Reply::chat(answer)
    });
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = plan(config(&server.base_url), dir.path(), "gear_wheel", 1);
    let plan = result.unwrap();
    assert!(plan.update.creates);
    plan.update.write().unwrap();
    let set = PromptSet::from_file(&dir.path().join("gear_wheel.toml")).unwrap();
    assert_eq!((set.class.id.as_str(), set.class.name.as_str()), ("gear_wheel", "gear wheel"));
    assert_eq!(set.llm.normal.last().unwrap(), "A normal image of {c} has even teeth.");
    assert_eq!(set.llm.abnormal.last().unwrap(), "An abnormal image of {c} has a broken tooth.");
    assert_eq!(set.descriptors.abnormal.last().unwrap(), "missing tooth on the {c}");
    assert!(set.llm.normal.len() > 1, "the generic set's prompts come first");
    // Only the file appears: the temporary file was renamed over it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["gear_wheel.toml"]);
}

#[test]
fn the_completions_endpoint_continues_the_bullet() {
    let server = Server::start(|request, _| {
        let q = request.question();
        let text = if q.contains("An abnormal image of bottle") {
            " An abnormal image of bottle has a chip.\n- An abnormal image of bottle is dirty."
        } else if q.contains("A normal image of bottle") {
            " A normal image of bottle is round."
        } else {
            " crack near the rim\n- stain on the glass"
        };
        Reply::json(200, serde_json::json!({"choices": [{"text": text, "index": 0}]}))
    });
    let dir = tempfile::tempdir().unwrap();
    let config = LlmConfig {
        api: LlmApi::Completions,
        ..config(&server.base_url)
    };
    let plan = plan(config, dir.path(), "bottle", 1).0.unwrap();
    assert_eq!(plan.generated.normal, ["A normal image of {c} is round."]);
    assert_eq!(plan.generated.abnormal, ["An abnormal image of {c} has a chip.", "An abnormal image of {c} is dirty."]);
    assert_eq!(plan.generated.descriptors, ["crack near the rim", "stain on the glass"]);
    let requests = server.requests();
    assert!(requests.iter().all(|r| r.path == "/v1/completions" && r.body["prompt"].is_string()));
    assert!(requests[0].question().ends_with("\n-"));
}

#[test]
fn a_server_error_is_retried() {
    let server = Server::start(|request, n| match n {
        0 => Reply::json(500, serde_json::json!({"error": "model is loading"})),
        _ => Reply::chat(&llm_answer(&request.question())),
    });
    let dir = tempfile::tempdir().unwrap();
    let (result, events) = plan(config(&server.base_url), dir.path(), "bottle", 1);
    assert!(!result.unwrap().generated.normal.is_empty());
    assert_eq!(server.requests().len(), 4, "3 queries, the first one twice");
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            GenerateEvent::Retrying(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 1);
    assert_eq!((retries[0].status, retries[0].attempt), (500, 1));
}

#[test]
fn too_many_requests_waits_for_retry_after() {
    let server = Server::start(|_, n| match n {
        0 => Reply {
            headers: vec![("Retry-After", "1".into())],
            ..Reply::json(429, serde_json::json!({"error": "rate limited"}))
        },
        _ => Reply::chat("- fine"),
    });
    let client = LlmClient::new(config(&server.base_url)).unwrap();
    let mut waits = Vec::new();
    let start = Instant::now();
    let answer = client.complete("hello", &mut |n| waits.push(n.wait)).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(answer, "- fine");
    assert_eq!(server.requests().len(), 2);
    assert_eq!(waits, [Duration::from_secs(1)], "Retry-After, not the 10 ms backoff");
    assert!(elapsed >= Duration::from_millis(950), "waited {elapsed:?}");
}

#[test]
fn retries_end_with_the_last_status() {
    let server = Server::start(|_, _| Reply::raw(503, b"overloaded".to_vec()));
    let client = LlmClient::new(LlmConfig { retries: 2, ..config(&server.base_url) }).unwrap();
    let e = client.complete("hello", &mut |_| {}).unwrap_err().to_string();
    assert_eq!(server.requests().len(), 3);
    assert!(e.contains("HTTP 503 after 3 attempts: overloaded") && e.contains(&server.base_url), "{e}");
}

/// Runs a generation that must fail and checks the message and that the file is untouched.
fn assert_fails(config: LlmConfig, expected: &[&str]) -> String {
    let (dir, path) = folder_with_hand_edited_bottle();
    let before = std::fs::read(&path).unwrap();
    let url = format!("{}/chat/completions", config.base_url);
    let e = plan(config, dir.path(), "bottle", 1).0.unwrap_err().to_string();
    assert!(e.contains(&url), "{e:?} names {url}");
    for part in expected {
        assert!(e.contains(part), "{e:?} says {part:?}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file is untouched");
    e
}

#[test]
fn a_slow_server_times_out() {
    let server = Server::start(|request, _| Reply {
        delay: Duration::from_secs(3),
        ..Reply::chat(&llm_answer(&request.question()))
    });
    let config = LlmConfig {
        timeout_ms: 300,
        ..config(&server.base_url)
    };
    assert_fails(config, &["timeout", "0.3 s"]);
}

#[test]
fn a_refused_connection_is_reported() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert_fails(config(&format!("http://127.0.0.1:{port}/v1")), &["cannot connect", "is the LLM server running"]);
}

#[test]
fn malformed_json_is_reported() {
    let server = Server::start(|_, _| Reply::raw(200, b"{\"choices\": [".to_vec()));
    assert_fails(config(&server.base_url), &["malformed JSON", "{\"choices\": ["]);
}

#[test]
fn an_empty_answer_is_reported() {
    let server = Server::start(|_, _| Reply::chat("  \n"));
    assert_fails(config(&server.base_url), &["answer is empty"]);
    let server = Server::start(|_, _| Reply::json(200, serde_json::json!({"choices": []})));
    assert_fails(config(&server.base_url), &["answer is empty"]);
}

#[test]
fn a_huge_answer_is_refused() {
    let huge = || {
        let content = "x".repeat(10 * 1024 * 1024);
        Reply::chat(&format!("- {content}"))
    };
    let server = Server::start(move |_, _| huge());
    assert_fails(config(&server.base_url), &["larger than 2097152 bytes"]);
    // Without Content-Length the client reads up to the limit, not the whole body.
    let server = Server::start(move |_, _| Reply { no_length: true, ..huge() });
    assert_fails(config(&server.base_url), &["larger than 2097152 bytes"]);
}

#[test]
fn an_answer_without_list_items_is_reported() {
    let server = Server::start(|_, _| Reply::chat("I'm sorry, but I can't help with that."));
    assert_fails(config(&server.base_url), &["no list items", "normal query", "I'm sorry"]);
}

/// `alfa prompts generate ARGS`, with CLIP's tokenizer.json unless `embedded`.
fn generate_command(args: &[&str], embedded: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alfa"));
    command.args(["prompts", "generate"]).args(args);
    if !embedded {
        command.arg("--tokenizer").arg(common::shared_tokenizer());
    }
    command
}

fn alfa(args: &[&str]) -> Command {
    generate_command(args, false)
}

#[test]
fn cli_fails_with_the_servers_message_and_never_shows_the_key() {
    let key = "sk-test-secret-7f3a9";
    let server = Server::start(move |_, _| {
        Reply::json(401, serde_json::json!({"error": {"message": format!("Incorrect API key provided: {key}")}}))
    });
    let (dir, path) = folder_with_hand_edited_bottle();
    let before = std::fs::read(&path).unwrap();
    let out = alfa(&["--class", "bottle", "--out", dir.path().to_str().unwrap(), "--llm-url", &server.base_url])
        .args(["--api-key-env", "ALFA_TEST_LLM_KEY"])
        .env("ALFA_TEST_LLM_KEY", key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("{}/chat/completions: HTTP 401", server.base_url)), "{stderr}");
    assert!(stderr.contains("Incorrect API key provided"), "{stderr}");
    assert!(!stderr.contains(key) && !String::from_utf8_lossy(&out.stdout).contains(key), "{stderr}");
    assert_eq!(server.requests()[0].authorization.as_deref(), Some(format!("Bearer {key}").as_str()));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn cli_dry_run_prints_the_new_prompts_and_writes_nothing() {
    let server = Server::start(|request, _| Reply::chat(&llm_answer(&request.question())));
    let (dir, path) = folder_with_hand_edited_bottle();
    let before = std::fs::read(&path).unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let out = alfa(&["--class", "bottle", "--class", "gear_wheel", "--out", out_dir, "--llm-url", &server.base_url])
        .args(["--samples", "1", "--dry-run"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("bottle: +1 normal, +3 abnormal, +2 descriptors: would update"), "{stdout}");
    assert!(stdout.contains("  + normal: A normal image of {c} shows a round rim."), "{stdout}");
    assert!(stdout.contains("gear_wheel: "), "{stdout}");
    assert_eq!(server.requests().len(), 6);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["bottle.toml"], "no file for gear_wheel");
}

/// Without `--tokenizer` and without a hub (nothing listens on port 9, an empty cache),
/// the embedded tokenizer drops the prompt over CLIP's 77 tokens as the file does.
#[test]
fn cli_needs_no_tokenizer_file_and_no_network() {
    let server = Server::start(|request, _| Reply::chat(&llm_answer(&request.question())));
    let cache = tempfile::tempdir().unwrap();
    let run = |embedded: bool| {
        let (dir, _) = folder_with_hand_edited_bottle();
        let args = ["--class", "bottle", "--out", dir.path().to_str().unwrap(), "--llm-url", &server.base_url];
        let out = generate_command(&args, embedded)
            .args(["--samples", "1", "--dry-run"])
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().replace(dir.path().to_str().unwrap(), "DIR")
    };
    let embedded = run(true);
    assert!(embedded.contains("bottle: +1 normal, +3 abnormal, +2 descriptors: would update"), "{embedded}");
    assert_eq!(embedded, run(false));
}

#[test]
fn cli_without_out_adds_the_prompts_to_the_class_recipe() {
    let server = Server::start(|request, _| Reply::chat(&llm_answer(&request.question())));
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().join("recipes");
    let out = alfa(&["--class", "bottle", "--llm-url", &server.base_url, "--samples", "1"])
        .env("ALFA_RECIPES", &recipes)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = recipes.join("bottle/prompts.toml");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("created {}", file.display())));
    let set = PromptSet::from_file(&file).unwrap();
    assert!(set.llm.abnormal.iter().any(|p| p == "An abnormal image of {c} shows a chipped rim."), "{:?}", set.llm.abnormal);
    // The class's prompt set from now on, for the app and every command.
    let resolved = alfa::prompts::PromptStore::in_recipes(&alfa::recipe::Recipes::new(&recipes)).resolve("bottle").unwrap();
    assert_eq!(resolved.path.as_deref(), Some(file.as_path()));
}
