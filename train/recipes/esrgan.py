"""ESRGAN's GAN stage: RRDBNet initialised from the PSNR-oriented model, a VGG-style
discriminator with the relativistic average GAN loss, and a perceptual loss on VGG19 conv5_4
features *before* activation.  L_G = L_percep + λ·L_G^Ra + η·L1 with λ = 5e-3, η = 1e-2.

VGG19 weights cannot be downloaded here: ``extra.vgg_weights`` names a local torchvision
``vgg19`` state dict (``features.N.weight`` keys). Without it the perceptual network is random,
which only makes sense in tests (``extra.allow_random_vgg: true``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srserve.models import SRNet

from ..config import ConfigError
from ..data import expand_path
from .base import Recipe, adam, step_decay

# torchvision's vgg19 ``features`` layout: conv channel counts, 'M' = max-pool
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """``features`` of torchvision's VGG19 up to conv5_4 (index 34), without its ReLU."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG19_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers[:-1])  # drop the last ReLU: pre-activation conv5_4
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


def load_vgg(extra: dict) -> VGG19Features:
    vgg = VGG19Features()
    path = extra.get("vgg_weights")
    if path:
        from srserve.models.checkpoint import load_checkpoint

        state = {k: v for k, v in load_checkpoint(expand_path(path)).items() if k.startswith("features.")}
        own = vgg.state_dict()
        vgg.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    elif not extra.get("allow_random_vgg"):
        raise ConfigError("the GAN stage needs VGG19 weights: set extra.vgg_weights to a local torchvision "
                          "vgg19 state dict (nothing can be downloaded here)")
    return vgg.eval()


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's discriminator: 10 convs (3x3 stride 1 / 4x4 stride 2) with BN and LeakyReLU,
    then two linear layers. An adaptive pool to 4x4 makes it accept any patch ≥ 32 px
    (it is the identity for the paper's 128 px patches)."""

    def __init__(self, num_feat: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, num_feat, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        widths = [num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8]
        cin = num_feat
        for i, w in enumerate(widths):
            if i > 0:
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, True)]
                cin = w
            layers += [nn.Conv2d(cin, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Linear(cin * 16, 100), nn.LeakyReLU(0.2, True), nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def relativistic_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RaGAN: D_Ra(a, b) = σ(C(a) − E[C(b)]). Returns (loss for whoever wants ``real`` to look
    real and ``fake`` fake, i.e. the discriminator's; and the swapped one, the generator's)."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    ones, zeros = torch.ones_like(real_rel), torch.zeros_like(real_rel)
    d_loss = (F.binary_cross_entropy_with_logits(real_rel, ones) + F.binary_cross_entropy_with_logits(fake_rel, zeros)) / 2
    g_loss = (F.binary_cross_entropy_with_logits(real_rel, zeros) + F.binary_cross_entropy_with_logits(fake_rel, ones)) / 2
    return d_loss, g_loss


class ESRGANRecipe(Recipe):
    def __init__(self, cfg, device, sampler=None):
        super().__init__(cfg, device, sampler)
        extra = cfg.extra
        self.disc = VGGStyleDiscriminator(extra.get("disc_features", 64)).to(device)
        self.vgg = load_vgg(extra).to(device)
        self.modules["disc"] = self.disc
        self.optimizers["net"] = adam(self.net.parameters(), cfg.optim)
        self.optimizers["disc"] = adam(self.disc.parameters(), cfg.optim)
        for k, opt in self.optimizers.items():
            self.schedulers[k] = step_decay(opt, cfg.optim)
        self.wrapper = SRNet(self.spec, self.net, self.scales[0])
        self.lambda_gan = extra.get("lambda_gan", 5e-3)
        self.eta_l1 = extra.get("eta_l1", 1e-2)

    def step(self, iteration: int) -> dict[str, float]:
        lr, hr = self.sampler.batch(self.cfg.data.get("batch", 16), self.scales[0])
        lr, hr = lr.to(self.device), hr.to(self.device)
        self.net.train()
        self.disc.train()
        sr = self.wrapper(lr)

        # generator: perceptual + λ·RaGAN + η·L1, discriminator frozen
        for p in self.disc.parameters():
            p.requires_grad = False
        percep = F.l1_loss(self.vgg(sr), self.vgg(hr).detach())
        _, g_gan = relativistic_losses(self.disc(hr).detach(), self.disc(sr))
        l1 = F.l1_loss(sr, hr)
        g_loss = percep + self.lambda_gan * g_gan + self.eta_l1 * l1
        self.optimizers["net"].zero_grad(set_to_none=True)
        g_loss.backward()
        self.optimizers["net"].step()

        # discriminator on detached fakes
        for p in self.disc.parameters():
            p.requires_grad = True
        d_loss, _ = relativistic_losses(self.disc(hr), self.disc(sr.detach()))
        self.optimizers["disc"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["disc"].step()
        self.after_step()
        return {"g": g_loss.item(), "percep": percep.item(), "g_gan": g_gan.item(), "l1": l1.item() * 255,
                "d": d_loss.item()}
