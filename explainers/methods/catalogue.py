"""The built-in explanation methods' records, in the registry's order: what each map is, its
formula and where it is a default. Their classes: `cams`, `guided`, `occlusion` (`@implements`).

Plain data, imported with the package (no torch): `--methods`, its help and the configs' defaults
read these records before any model is loaded.
"""
from explainers.methods.registry import declare

CAM_NEEDS = ("activations", "gradients")

declare("gradcam", "Grad-CAM", kind="cam", needs=CAM_NEEDS, defaults=("slides", "images"),
        formula="Selvaraju et al. 2017: α_c = mean_ij G_cij",
        description="Regions whose features raise the class score (coarse, at the target layer's grid).")

declare("gradcampp", "Grad-CAM++", kind="cam", needs=CAM_NEEDS, defaults=("images",),
        formula="Chattopadhay et al. 2018: α_c = Σ_ij a_cij relu(G_cij)",
        description="Like Grad-CAM, but weights each location's positive gradients, so several "
                    "separate regions of one class show up better.")

declare("hirescam", "HiResCAM", kind="cam", needs=CAM_NEEDS,
        formula="Draelos & Carin 2020: α = G element-wise",
        description="Grad-CAM without averaging the gradients: follows the model's own computation.")

declare("cam", "CAM", kind="cam", needs=("activations",),
        formula="Zhou et al. 2016: α_c = the linear weight of channel c after global pooling",
        description="The classifier's weights on the pooled features, mapped back to locations.")

declare("guided_backprop", "Guided backprop", kind="input-gradient", needs=("patches",), defaults=("images",),
        formula="Springenberg et al. 2015: max_c |guided d(score)/d(image)|",
        description="Fine pixel detail the class score is sensitive to (not class-specific on its own).")

declare("guided_gradcam", "Guided Grad-CAM", kind="input-gradient", needs=("patches",),
        requires=("gradcam", "guided_backprop"), defaults=("images",),
        formula="Selvaraju et al. 2017: guided backprop ⊙ Grad-CAM upsampled to the patch",
        description="Guided backprop restricted to the Grad-CAM region: fine detail of the evidence.")

declare("occlusion", "Occlusion", kind="perturbation", needs=("patches",), interactive=False,
        formula="Zeiler & Fergus 2014: s(x) - s(x with window (i, j) blanked), 8 x 8 windows",
        description="How much the class score drops when each window of the patch is greyed out.")
