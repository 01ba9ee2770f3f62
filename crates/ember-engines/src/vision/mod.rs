//! Images on candle: the uploaded bytes decoded and preprocessed (`image`), then an ImageNet
//! classifier (`ImageClassifier`, here) answering the five most likely labels, or a detector
//! answering the objects it finds: DETR (`detector`, `detr`) or, where DETR is not installed,
//! MB3-CenterNet (`centernet`, a TF.js model that `tfjs` translates for ONNX Runtime).
//!
//! - `resnet`: ResNet-50's architecture from a Hugging Face folder (`config.json` with its
//!   `id2label`, `model.safetensors`), preprocessed with ImageNet's mean and standard deviation.
//! - `efficientnet`: EfficientNet-Lite0 from its published legacy PyTorch file
//!   (`efficientnet-lite0.pth`, read by `torch_legacy`), preprocessed as it was trained,
//!   `(x - 127) / 128`, and labelled with `imagenet-labels.txt` (the ImageNet-1k class names in
//!   class order, as ResNet-50's `id2label` has them; from timm's `imagenet_synsets.txt` and
//!   `imagenet_synset_to_lemma.txt`).
//!
//! Both take one image per call on the model's worker thread, where the decoding runs too, and
//! run on ONNX Runtime where it is installed (the network written into an ONNX graph by its own
//! layers), on candle elsewhere.

pub mod centernet;
pub mod detector;
pub mod detr;
pub mod efficientnet;
pub mod image;
pub mod layers;
pub mod resample;
pub mod resnet;
mod tfjs;
pub mod torch_legacy;

use self::image::{Preprocess, Resize, decode_rgb};
use crate::onnx_proto::{FLOAT, GraphBuilder, value_info};
use crate::wrong_task;
use ::image::RgbImage;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use efficientnet::EfficientNetLite;
use ember_core::InferError;
use ember_core::runner::Runner;
use ember_core::tasks::classification::LabelScore;
use ember_core::tasks::image_classification::{ImageClassificationOutput, TOP_LABELS};
use ember_core::tasks::{TaskOutput, TaskRequest};
use ort::session::Session;
use resnet::{ResNet, ResNetConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// ImageNet-1k's class names, one a line, in class order.
pub const IMAGENET_LABELS: &str = include_str!("imagenet-labels.txt");

/// EfficientNet-Lite0's weights in its model folder.
const EFFICIENTNET_FILE: &str = "efficientnet-lite0.pth";

enum Network {
    ResNet(ResNet),
    EfficientNetLite(EfficientNetLite),
}

pub struct ImageClassifier {
    network: Network,
    /// The same network on ONNX Runtime, where it is installed: measured 3× faster than
    /// candle's convolutions (`ember bench image`).
    onnx: Option<Mutex<Session>>,
    preprocess: Preprocess,
    labels: Vec<String>,
}

impl ImageClassifier {
    /// Loads the `architecture` (the catalog's: `resnet` or `efficientnet-lite`) from `dir`.
    pub fn load(architecture: &str, dir: &Path) -> Result<ImageClassifier, InferError> {
        let load_failed = |reason: String| InferError::LoadFailed {
            model: dir.display().to_string(),
            reason,
        };
        let classifier = match architecture {
            "resnet" => load_resnet(dir),
            "efficientnet-lite" => load_efficientnet(dir),
            other => Err(anyhow::anyhow!(
                "no image classifier for architecture {other:?}"
            )),
        }
        .map_err(|e| load_failed(format!("{e:#}")))?;
        let onnx = match onnx_session(&classifier.network) {
            Ok(session) => Some(Mutex::new(session)),
            Err(why) => {
                tracing::warn!(reason = %format!("{why:#}"), "the classifier runs on candle");
                None
            }
        };
        Ok(ImageClassifier { onnx, ..classifier })
    }

    /// Whether the network runs on ONNX Runtime (else on candle).
    pub fn on_onnx_runtime(&self) -> bool {
        self.onnx.is_some()
    }

    /// The model's input for `image`: `[1, 3, 224, 224]`.
    pub fn pixels(&self, image: &RgbImage) -> Result<Tensor, InferError> {
        self.preprocess.pixels(image).map_err(internal)
    }

    /// The model's logits, one per label.
    pub fn logits(&self, pixels: &Tensor) -> Result<Vec<f32>, InferError> {
        if let Some(session) = &self.onnx {
            let run = || -> anyhow::Result<Vec<f32>> {
                let inputs = ort::inputs!["pixels" => crate::onnx::input(pixels)?];
                let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
                let logits = crate::onnx::first_output(&session.run(inputs)?)?;
                Ok(logits.flatten_all()?.to_vec1::<f32>()?)
            };
            return run().map_err(internal);
        }
        let logits = match &self.network {
            Network::ResNet(network) => network.forward(pixels),
            Network::EfficientNetLite(network) => network.forward(pixels),
        };
        logits.and_then(|l| l.to_vec1()).map_err(internal)
    }

    /// The `TOP_LABELS` most likely labels of the encoded image, most likely first.
    pub fn classify(&self, bytes: &[u8]) -> Result<Vec<LabelScore>, InferError> {
        let image =
            decode_rgb(bytes).map_err(|error| InferError::invalid("/image", error.to_string()))?;
        let logits = self.logits(&self.pixels(&image)?)?;
        let probabilities = crate::encoders::softmax(&logits);
        let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ranked
            .into_iter()
            .take(TOP_LABELS)
            .map(|(index, score)| LabelScore {
                label: self.labels[index].clone(),
                score,
            })
            .collect())
    }
}

impl Runner for ImageClassifier {
    fn run(&mut self, request: TaskRequest) -> Result<TaskOutput, InferError> {
        let TaskRequest::ImageClassification(request) = request else {
            return Err(wrong_task(&request));
        };
        let labels = self.classify(&request.image)?;
        Ok(TaskOutput::ImageClassification(ImageClassificationOutput {
            labels,
        }))
    }
}

/// `network` as an ONNX graph (`pixels` → `logits`) opened on ONNX Runtime.
fn onnx_session(network: &Network) -> anyhow::Result<Session> {
    let mut graph = GraphBuilder::default();
    let logits = match network {
        Network::ResNet(network) => network.onnx(&mut graph, "pixels")?,
        Network::EfficientNetLite(network) => network.onnx(&mut graph, "pixels")?,
    };
    graph.output(&logits, "logits");
    let pixels = value_info(
        "pixels",
        FLOAT,
        &[Some("batch"), None, Some("height"), Some("width")],
        &[3],
    );
    let logits = value_info("logits", FLOAT, &[Some("batch"), Some("classes")], &[]);
    let model = graph.model("classifier", vec![pixels], vec![logits], 18);
    crate::onnx::session_from_memory(model, crate::cpu_threads())
}

/// ImageNet's mean and standard deviation, which ResNet-50 and DETR were trained with.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// ResNet-50's image processor: shortest edge 224 / crop_pct 0.875, centre crop 224.
fn preprocess((mean, std): ([f32; 3], [f32; 3])) -> Preprocess {
    Preprocess {
        resize: Resize::ShortestThenCrop {
            shortest: 256,
            crop: 224,
        },
        mean,
        std,
    }
}

/// A Hugging Face model folder: `config.json` read as `C`, its `id2label`, and the weights of
/// `model.safetensors`.
fn read_folder<C: serde::de::DeserializeOwned>(
    dir: &Path,
) -> anyhow::Result<(C, HashMap<String, String>, VarBuilder<'static>)> {
    #[derive(serde::Deserialize)]
    struct Labels {
        id2label: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(dir.join("config.json"))?;
    let config: C = serde_json::from_str(&text)?;
    let labels: Labels = serde_json::from_str(&text)?;
    let tensors = crate::embed::load_safetensors(&dir.join("model.safetensors"))
        .map_err(anyhow::Error::msg)?;
    let weights = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    Ok((config, labels.id2label, weights))
}

fn load_resnet(dir: &Path) -> anyhow::Result<ImageClassifier> {
    let (config, id2label, weights): (ResNetConfig, _, _) = read_folder(dir)?;
    let network = ResNet::new(&config, weights)?;
    let labels = crate::encoders::labels_in_order(&id2label).map_err(anyhow::Error::msg)?;
    check_labels(&labels, network.classes())?;
    Ok(ImageClassifier {
        network: Network::ResNet(network),
        onnx: None,
        preprocess: preprocess((IMAGENET_MEAN, IMAGENET_STD)),
        labels,
    })
}

fn load_efficientnet(dir: &Path) -> anyhow::Result<ImageClassifier> {
    let tensors = torch_legacy::read_state_dict(&dir.join(EFFICIENTNET_FILE))?;
    let network =
        EfficientNetLite::new(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))?;
    let labels: Vec<String> = IMAGENET_LABELS.lines().map(str::to_string).collect();
    check_labels(&labels, network.classes())?;
    Ok(ImageClassifier {
        network: Network::EfficientNetLite(network),
        onnx: None,
        preprocess: preprocess(([127.0 / 255.0; 3], [128.0 / 255.0; 3])),
        labels,
    })
}

/// Checks that there is a label for each of the model's `classes` outputs.
fn check_labels(labels: &[String], classes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        labels.len() == classes,
        "{} labels for a classifier of {classes} classes",
        labels.len()
    );
    Ok(())
}

fn internal(error: impl std::fmt::Display) -> InferError {
    InferError::Internal(format!("image classifier: {error}"))
}
