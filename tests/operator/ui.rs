//! The web UI in a real headless browser: Debian's `chromium` driven through `chromedriver`'s WebDriver
//! protocol (plain HTTP and JSON) against a real `fm serve`. `scripts/test.sh` installs both (`$CHROMIUM`
//! and `$CHROMEDRIVER` point elsewhere). With `FM_UI_SCREENSHOTS=docs` the tests save the screenshots the
//! README shows (`docs/ui-pipelines.png`, `docs/ui-run.png`).

use std::net::TcpListener;

use super::*;

/// A chromedriver process and one browser session, ended on drop.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
}

fn find_on_path(env: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{names:?} not found on PATH (scripts/test.sh installs chromium and chromium-driver; or set {env})"
    );
}

impl Browser {
    async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(find_on_path("CHROMEDRIVER", &["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver to answer", || async {
            let status: Value = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            status["value"]["ready"].as_bool().filter(|r| *r)
        })
        .await;
        let chromium = find_on_path(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let answer: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                // `fm serve --tls` has a self-signed CA of its own.
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1440,1000", "--hide-scrollbars"]
                }
            }}}))
            .send()
            .await
            .expect("new session request")
            .json()
            .await
            .expect("new session answer");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver did not start a session: {answer}"));
        Browser {
            session: format!("{base}/session/{id}"),
            driver,
            http,
        }
    }

    /// One WebDriver command; its `value`, or a panic naming the command and the driver's error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: answer is not JSON: {e}"));
        if answer["value"]["error"].is_string() {
            panic!("{method} {url} {body}: {}", answer["value"]);
        }
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; returns what it returns.
    async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Waits until `script` returns something other than null/false; returns it.
    async fn until(&self, what: &str, script: &str, args: Value) -> Value {
        eventually(what, || async {
            let value = self.eval(script, args.clone()).await;
            (!value.is_null() && value != json!(false)).then_some(value)
        })
        .await
    }

    /// Clicks the element `css` selects, as a user does (a real pointer click through WebDriver).
    async fn click(&self, css: &str) {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string();
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    /// Saves a PNG of the window as `name` in `$FM_UI_SCREENSHOTS` (relative to the repository), when set.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("FM_UI_SCREENSHOTS") else {
            return;
        };
        use base64::Engine as _;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("screenshot is base64"))
            .expect("screenshot decodes");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(name), bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes the browser; then the driver goes.
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            reqwest::blocking::Client::new()
                .delete(url)
                .timeout(Duration::from_secs(10))
                .send()
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn apply(client: &Client, pipeline: Value) {
    let pipeline: Pipeline = serde_json::from_value(pipeline).expect("pipeline");
    Api::<Pipeline>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pipeline)
        .await
        .expect("create pipeline");
}

/// The runId of the newest run of `pipeline`, once the history has one.
async fn newest_run(server: &str, pipeline: &str) -> String {
    eventually(&format!("a run of {pipeline} in the history"), || async {
        let page: Value = reqwest::get(format!("{server}/api/v1/runs?pipeline={pipeline}"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        page["runs"][0]["runId"].as_str().map(String::from)
    })
    .await
}

/// A phase the run page shows for stage `stage`.
const STAGE_PHASE: &str = "const n = document.querySelector(`.node[data-stage=\"${arguments[0]}\"]`); return n && n.dataset.phase;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_starts_a_run_and_shows_its_stages_running_then_succeeded_without_a_reload() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let server = fm.url();
    apply(
        &client,
        json!({
            "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
            "metadata": {"name": "orders", "namespace": "default"},
            "spec": {
                "inputSchema": {"type": "object", "required": ["customer"], "properties": {
                    "customer": {"type": "string", "description": "who ordered"},
                    "total": {"type": "number"}}},
                "sampleInput": {"customer": "Ada", "total": 120},
                "triggers": {"webhook": {"enabled": true, "path": "/webhooks/orders"}},
                "stages": [
                    {"id": "greet", "componentType": "logger",
                     "config": {"message": "order of {{input.customer}}", "passthrough": "{{input.customer}}"}},
                    {"id": "price", "componentType": "json_transform",
                     "config": {"data": {"total": "{{input.total}}"}, "jmespath_expression": "total"}},
                    // Long enough that a page loaded late on a busy machine still sees it Running.
                    {"id": "check_stock", "componentType": "delay", "dependsOn": ["greet"], "config": {"ms": 10000}},
                    {"id": "reserve", "componentType": "delay", "dependsOn": ["check_stock", "price"],
                     "config": {"ms": 1200}},
                    {"id": "invoice", "componentType": "json_transform", "dependsOn": ["reserve"],
                     "config": {"data": {"who": "{{upstream.greet.passthrough}}", "total": "{{upstream.price.result}}"},
                                "mapping": {"customer": "who", "total": "total"}}},
                    {"id": "notify", "componentType": "logger", "dependsOn": ["invoice"],
                     "config": {"message": "invoiced {{upstream.invoice.result.customer}}"}}
                ]
            }
        }),
    )
    .await;
    apply(
        &client,
        json!({
            "apiVersion": "flowmason.io/v1", "kind": "Pipeline",
            "metadata": {"name": "nightly-report", "namespace": "default"},
            "spec": {"schedule": "0 3 * * *", "stages": [
                {"id": "collect", "componentType": "noop"},
                {"id": "publish", "componentType": "noop", "dependsOn": ["collect"]}]}
        }),
    )
    .await;

    let browser = Browser::start().await;
    browser.goto(&format!("{server}/ui/#/pipelines")).await;
    browser
        .until(
            "the pipelines page lists both pipelines",
            "return document.querySelectorAll('table.pipelines tr[data-pipeline]').length === 2",
            json!([]),
        )
        .await;

    // The pipeline page: its DAG, its spec, and Run with the form built from inputSchema.
    browser.click("tr[data-pipeline=\"orders\"] a").await;
    browser
        .until(
            "the pipeline page shows its DAG and its form",
            "return document.querySelectorAll('#dag .node').length === 6 && !!document.querySelector('#run-form input[name=customer]')",
            json!([]),
        )
        .await;
    let yaml = browser
        .eval(
            "return document.querySelector('pre.yaml').textContent",
            json!([]),
        )
        .await;
    assert!(
        yaml.as_str().is_some_and(|y| y.contains("check_stock")),
        "{yaml}"
    );
    browser
        .eval(
            "document.querySelector('#run-form input[name=customer]').value = 'Grace'; window.fmNoReload = 1; return 1",
            json!([]),
        )
        .await;
    browser.click("#run").await;

    // The run page follows the run: stages turn Running, then Succeeded, on the same page load.
    let run_id = browser
        .until(
            "the run page",
            "const m = location.hash.match(/^#\\/runs\\/(.+)$/); return m && document.querySelector('#dag .node') && m[1]",
            json!([]),
        )
        .await;
    let run_id = run_id.as_str().expect("run id").to_string();
    browser
        .until(
            "check_stock Running",
            "const n = document.querySelector('.node[data-stage=check_stock]'); return n && n.dataset.phase === 'Running'",
            json!([]),
        )
        .await;
    browser
        .until(
            "the run Succeeded on the page",
            "return document.querySelector('#run-title').dataset.phase === 'Succeeded'",
            json!([]),
        )
        .await;
    for stage in [
        "greet",
        "price",
        "check_stock",
        "reserve",
        "invoice",
        "notify",
    ] {
        let phase = browser.eval(STAGE_PHASE, json!([stage])).await;
        assert_eq!(phase, json!("Succeeded"), "stage {stage}");
    }
    let same_page = browser
        .eval("return window.fmNoReload === 1", json!([]))
        .await;
    assert_eq!(same_page, json!(true), "the page was reloaded");
    // The run was started with the form's input, and the page shows it.
    let detail: Value = reqwest::get(format!("{server}/api/v1/runs/{run_id}"))
        .await
        .expect("run")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["inputs"]["customer"], json!("Grace"));
    // Each stage's input as its attempt got it: templates rendered.
    let greet = detail["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["id"] == "greet"))
        .expect("stage greet");
    assert_eq!(
        greet["input"],
        json!({"message": "order of Grace", "passthrough": "Grace"})
    );
    browser.click(".node[data-stage=\"greet\"]").await;
    let input = browser
        .until(
            "the stage's rendered input",
            "const i = document.querySelector('#stage .stage-input'); return i && i.textContent",
            json!([]),
        )
        .await;
    assert!(
        input
            .as_str()
            .is_some_and(|t| t.contains("order of Grace") && !t.contains("{{")),
        "{input}"
    );
    let details = browser
        .until(
            "the stage details",
            "const t = document.querySelector('#stage').textContent; return t.includes('order of Grace') && t",
            json!([]),
        )
        .await;
    assert!(
        details.as_str().is_some_and(|t| t.contains("Output")),
        "{details}"
    );
    let log_lines = browser
        .eval(
            "return document.querySelectorAll('#stage .log li').length",
            json!([]),
        )
        .await;
    assert_eq!(log_lines, json!(1), "each log line once");
    browser.screenshot("ui-run.png").await;

    browser.goto(&format!("{server}/ui/#/pipelines")).await;
    browser
        .until(
            "the pipelines page with the run's stats",
            "const r = document.querySelector('tr[data-pipeline=\"orders\"]'); return r && r.textContent.includes('100% of 1') && r.textContent.includes('webhook /webhooks/orders')",
            json!([]),
        )
        .await;
    browser.screenshot("ui-pipelines.png").await;

    // A 200-stage run renders readably (layered and zoomable); the time it took is printed, not asserted.
    let stages: Vec<Value> = (0..200)
        .map(|i| {
            let depends: Vec<String> = match i {
                0..10 => vec![],
                _ => vec![
                    format!("s{:03}", i - 10),
                    format!("s{:03}", (i * 7) % (i - (i % 10))),
                ],
            };
            json!({"id": format!("s{i:03}"), "componentType": "noop", "dependsOn": depends})
        })
        .collect();
    apply(
        &client,
        json!({"apiVersion": "flowmason.io/v1", "kind": "Pipeline",
               "metadata": {"name": "wide", "namespace": "default"}, "spec": {"stages": stages}}),
    )
    .await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_run(&runs, "wide-1", "wide", json!({})).await;
    let wide = newest_run(&server, "wide").await;
    browser.goto(&format!("{server}/ui/#/runs/{wide}")).await;
    let rendered = browser
        .until(
            "the 200-stage DAG",
            "return document.querySelectorAll('#dag .node').length === 200 && document.querySelector('#dag svg').dataset.renderMs",
            json!([]),
        )
        .await;
    println!(
        "200-stage DAG rendered in {} ms",
        rendered.as_str().unwrap_or("?")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_cancels_a_slow_run_and_reruns_a_failed_run_from_its_failed_stage() {
    let data = tempfile::tempdir().expect("tempdir");
    let fm = Fm::serve(data.path(), &[]);
    let client = fm.client().await;
    let server = fm.url();
    create_pipeline(
        &Api::namespaced(client.clone(), "default"),
        "slow",
        json!([{"id": "sleep", "componentType": "delay", "config": {"ms": 600_000}}]),
    )
    .await;
    apply(
        &client,
        json!({"apiVersion": "flowmason.io/v1", "kind": "Pipeline",
               "metadata": {"name": "broken", "namespace": "default"},
               "spec": {"retries": 0, "stages": [
                   {"id": "fetch", "componentType": "noop"},
                   {"id": "upload", "componentType": "http_request", "dependsOn": ["fetch"],
                    "config": {"url": "http://127.0.0.1:1/unreachable"}}]}}),
    )
    .await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    let browser = Browser::start().await;

    // Cancel on a slow run ends it Cancelled.
    create_run(&runs, "slow-1", "slow", json!({})).await;
    let slow = newest_run(&server, "slow").await;
    browser.goto(&format!("{server}/ui/#/runs/{slow}")).await;
    browser
        .until(
            "the slow stage Running",
            "const n = document.querySelector('.node[data-stage=sleep]'); return n && n.dataset.phase === 'Running'",
            json!([]),
        )
        .await;
    browser.click("#cancel").await;
    browser
        .until(
            "the run Cancelled on the page",
            "return document.querySelector('#run-title').dataset.phase === 'Cancelled'",
            json!([]),
        )
        .await;
    let cancelled = wait_phase(&runs, "slow-1", &terminal()).await;
    assert_eq!(
        cancelled.status.and_then(|s| s.phase),
        Some(RunPhase::Cancelled)
    );

    // Rerun from failed on a failed run creates the new run, and the page links it.
    create_run(&runs, "broken-1", "broken", json!({})).await;
    let failed = wait_phase(&runs, "broken-1", &terminal()).await;
    assert_eq!(failed.status.and_then(|s| s.phase), Some(RunPhase::Failed));
    let broken = newest_run(&server, "broken").await;
    browser.goto(&format!("{server}/ui/#/runs/{broken}")).await;
    browser
        .until(
            "the failed run",
            "return document.querySelector('#run-title')?.dataset.phase === 'Failed' && !document.querySelector('#rerun-failed').disabled",
            json!([]),
        )
        .await;
    browser.click("#rerun-failed").await;
    let link = browser
        .until(
            "a link to the rerun",
            "const a = document.querySelector('#run-notice a[data-rerun]'); return a && a.getAttribute('href')",
            json!([]),
        )
        .await;
    let rerun_id = link
        .as_str()
        .and_then(|h| h.strip_prefix("#/runs/"))
        .expect("link to a run")
        .to_string();
    assert_ne!(rerun_id, broken);
    let detail: Value = eventually("the rerun in the history", || async {
        let response = reqwest::get(format!("{server}/api/v1/runs/{rerun_id}"))
            .await
            .ok()?;
        response.status().is_success().then_some(())?;
        response.json().await.ok()
    })
    .await;
    assert_eq!(detail["labels"]["flowmason.io/rerun-of"], json!(broken));
    // The new run's page links back to its origin, and `fetch` was taken over from it.
    browser.click("#run-notice a[data-rerun]").await;
    browser
        .until(
            "the rerun's page linking its origin",
            "return [...document.querySelectorAll('#run-facts a')].some(a => a.getAttribute('href') === '#/runs/' + arguments[0])",
            json!([broken]),
        )
        .await;
    let reused = browser
        .until(
            "fetch taken over",
            "return document.querySelector('#run-title').dataset.phase === 'Failed' && document.querySelector('.node[data-stage=fetch]').dataset.phase",
            json!([]),
        )
        .await;
    assert_eq!(reused, json!("Succeeded"));

    // The runs page filters by several phases at once: Failed and Cancelled, not the run still Running.
    create_run(&runs, "slow-2", "slow", json!({})).await;
    browser.goto(&format!("{server}/ui/#/runs")).await;
    browser
        .until(
            "the running run listed before filtering",
            "return [...document.querySelectorAll('#runs .phase')].some(p => p.dataset.phase === 'Running')",
            json!([]),
        )
        .await;
    browser.click("#run-filters input[value=Failed]").await;
    browser.click("#run-filters input[value=Cancelled]").await;
    browser.click("#run-filters button[type=submit]").await;
    let shown = browser
        .until(
            "only failed and cancelled runs",
            "const p = [...document.querySelectorAll('#runs .phase')].map(p => p.dataset.phase); \
             return location.hash.includes('phase=') && p.length === 3 && !p.includes('Running') && p.sort().join(',')",
            json!([]),
        )
        .await;
    assert_eq!(shown, json!("Cancelled,Failed,Failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_without_the_token_shows_the_token_form_and_no_run_data() {
    let data = tempfile::tempdir().expect("tempdir");
    // kubectl and browsers send the token only over HTTPS: `fm serve` requires --tls with it.
    let fm = Fm::serve(data.path(), &["--require-token", "--tls"]);
    let client = fm.client().await;
    let server = fm.url();
    create_pipeline(
        &Api::namespaced(client.clone(), "default"),
        "secret-work",
        json!([{"id": "only", "componentType": "noop"}]),
    )
    .await;
    let runs: Api<PipelineRun> = Api::namespaced(client.clone(), "default");
    create_run(&runs, "secret-work-1", "secret-work", json!({})).await;
    wait_phase(&runs, "secret-work-1", &terminal()).await;
    let token = std::fs::read_to_string(data.path().join("api/token")).expect("token");
    let token = token.trim();

    let browser = Browser::start().await;
    browser.goto(&format!("{server}/ui/#/runs")).await;
    browser
        .until(
            "the token form",
            "return !document.getElementById('login').hidden",
            json!([]),
        )
        .await;
    let shown = browser
        .eval(
            "return document.getElementById('main').textContent",
            json!([]),
        )
        .await;
    assert!(
        shown.as_str().is_some_and(|t| !t.contains("secret-work")),
        "run data shown without the token: {shown}"
    );
    // A wrong token is refused and the form stays.
    browser
        .eval(
            "document.getElementById('token').value = 'wrong'; return 1",
            json!([]),
        )
        .await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .until(
            "the refusal",
            "return !document.getElementById('login').hidden && document.getElementById('login-error').textContent.includes('refused')",
            json!([]),
        )
        .await;
    // The right token shows the runs.
    browser
        .eval(
            "document.getElementById('token').value = arguments[0]; return 1",
            json!([token]),
        )
        .await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .until(
            "the runs with the token",
            "return document.querySelector('table.runs')?.textContent.includes('secret-work-1')",
            json!([]),
        )
        .await;

    // The login link `fm serve` prints: the token is kept for the session and leaves the address bar.
    browser
        .eval("sessionStorage.clear(); return 1", json!([]))
        .await;
    browser
        .goto(&format!("{server}/ui/?token={token}#/runs"))
        .await;
    browser
        .until(
            "the runs through the login link",
            "return document.querySelector('table.runs')?.textContent.includes('secret-work-1')",
            json!([]),
        )
        .await;
    let address = browser.eval("return location.href", json!([])).await;
    assert!(
        address.as_str().is_some_and(|a| !a.contains(token)),
        "{address}"
    );
}
