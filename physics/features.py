"""Vibration features over frames, vectorised: one row of features per frame (rows of a 2-D array).

The stream and training both call ``vibration_features``; nothing else computes these numbers,
so a model is always scored with exactly the features it was trained on.

The envelope features follow the classic bearing-diagnosis recipe: find the frequency band where
the signal is most impulsive (spectral kurtosis, Antoni 2006), demodulate that band (Hilbert
envelope), and read the envelope spectrum at the bearing's defect frequencies and harmonics.
Amplitudes are divided by the envelope spectrum's median level and frequencies are taken as
multiples of shaft speed, so the features transfer across speeds and loads.

The band that spectral kurtosis picks can change with the load (another resonance rings
loudest), and with it every envelope line.  So the same lines are also read in ``DEFECT_BANDS``
fixed bands spread over the spectrum (fractions of Nyquist): in each, the envelope spectrum in
shaft orders (the frame's own speed), each defect line over that band's envelope level (log),
the band's share of the frame's energy (log) and its mean spectral kurtosis: a defect's
signature across the structure's resonances rather than in the one that happened to win.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from physics.bearing import BearingGeometry, defect_orders

__all__ = [
    "time_domain",
    "spectral_bands",
    "spectral_kurtosis",
    "demodulation_band",
    "envelope_spectrum",
    "order_amplitudes",
    "vibration_features",
    "N_SPECTRAL_BANDS",
    "ENVELOPE_ORDERS",
    "HARMONICS",
    "DEFECT_BANDS",
    "defect_band_edges",
    "envelope_line_names",
]

F64 = NDArray[np.float64]

N_SPECTRAL_BANDS = 8
HARMONICS = 3
ENVELOPE_ORDERS = ("bpfo", "bpfi", "bsf2", "ftf", "shaft")
"""Envelope lines read per frame: the defect frequencies (a ball defect strikes both races once
per spin, hence ``2*BSF``), the cage frequency and the shaft speed itself (inner-race and ball
defects are modulated by it)."""

DEFECT_BANDS = 3
"""Fixed demodulation bands, equal parts of 1/12..11/12 of Nyquist (0.5-2.2, 2.2-3.8 and
3.8-5.5 kHz at 12 kHz): below, shaft harmonics and misalignment; above, the anti-alias filter."""

SK_SEGMENT = 64  # STFT segment for spectral kurtosis: 187.5 Hz bins at 12 kHz
DEMOD_HALF_WIDTH_HZ = 600.0  # wide enough for 3 harmonics of BPFI's sidebands at ~30 Hz shaft


def _frames(frames: NDArray[np.floating]) -> F64:
    x = np.atleast_2d(np.asarray(frames, dtype=np.float64))
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"frames must be a 2-D array with samples, got shape {np.shape(frames)}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(
            f"{bad} frame(s) contain NaN or inf samples; reject them before featurising"
        )
    return x


def time_domain(frames: NDArray[np.floating]) -> dict[str, F64]:
    """RMS, peak, crest factor, excess kurtosis and skewness of each frame.

    A constant frame has RMS and peak but undefined shape statistics: those come back as NaN
    rather than as a misleading number.

    >>> rng = np.random.default_rng(0)
    >>> f = time_domain(rng.normal(0, 1, (2, 20000)))
    >>> np.round(f["vib_rms"], 1).tolist(), bool(np.all(np.abs(f["vib_kurtosis"]) < 0.2))
    ([1.0, 1.0], True)
    >>> time_domain(np.ones((1, 100)))["vib_kurtosis"].tolist()
    [nan]
    """
    return _time_domain(_frames(frames))


def _time_domain(x: F64) -> dict[str, F64]:
    rms = np.sqrt(np.einsum("ij,ij->i", x, x) / x.shape[1])
    peak = np.maximum(x.max(axis=1), -x.min(axis=1))
    centred = x - x.mean(axis=1, keepdims=True)
    c2 = centred * centred  # products, not **: numpy's generic pow is several times slower
    var = c2.mean(axis=1)
    flat = var <= 1e-24 * np.maximum(rms**2, 1e-300)
    safe_var = np.where(flat, np.nan, var)
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = np.einsum("ij,ij->i", c2, centred) / x.shape[1] / safe_var**1.5
        kurt = np.einsum("ij,ij->i", c2, c2) / x.shape[1] / safe_var**2 - 3.0
        crest = np.where(rms > 0, peak / rms, np.nan)
    return {
        "vib_rms": rms,
        "vib_peak": peak,
        "vib_crest": crest,
        "vib_kurtosis": kurt,
        "vib_skewness": skew,
    }


def spectral_bands(power: F64, n_bands: int = N_SPECTRAL_BANDS) -> F64:
    """Share of the frame's power in ``n_bands`` equal-width bands from 0 to Nyquist.

    ``power`` is the one-sided power spectrum, one row per frame.  Rows sum to 1 (NaN for a
    frame with no power at all).

    >>> p = np.zeros((1, 9)); p[0, 8] = 4.0
    >>> spectral_bands(p, 4).tolist()
    [[0.0, 0.0, 0.0, 1.0]]
    """
    p = power[:, 1:]  # without DC
    edges = np.linspace(0, p.shape[1], n_bands + 1).round().astype(int)
    sums = np.add.reduceat(p, edges[:-1], axis=1)
    total = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, sums / total, np.nan)


def spectral_kurtosis(x: F64, fs: float, segment: int = SK_SEGMENT) -> tuple[F64, F64]:
    """Spectral kurtosis of each frame from a Hann-windowed STFT with 50 % overlap.

    Returns ``(freqs_hz, sk)`` with ``sk`` of shape ``(n_frames, n_freqs)``.  SK is about 0 for
    Gaussian noise, -1 for a steady tone and large where the signal is impulsive.
    """
    if x.shape[1] < 4 * segment:
        raise ValueError(f"frames of {x.shape[1]} samples are too short; need >= {4 * segment}")
    segs = sliding_window_view(x, segment, axis=1)[:, :: segment // 2, :]
    spec = np.abs(np.fft.rfft(segs * np.hanning(segment), axis=2)) ** 2  # (F, S, bins)
    m2 = spec.mean(axis=1)
    m4 = (spec**2).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sk = np.where(m2 > 0, m4 / m2**2 - 2.0, 0.0)
    return np.fft.rfftfreq(segment, 1.0 / fs).astype(np.float64, copy=False), sk.astype(
        np.float64, copy=False
    )


def demodulation_band(
    x: F64, fs: float, half_width_hz: float = DEMOD_HALF_WIDTH_HZ
) -> tuple[F64, F64, F64]:
    """The band to demodulate, per frame: centred where spectral kurtosis peaks.

    Returns ``(low_hz, high_hz, sk_max)``.  Bins below ``half_width_hz`` (shaft harmonics live
    there) and the Nyquist bin are not candidates.
    """
    freqs, sk = spectral_kurtosis(x, fs)
    return _best_band(freqs, sk, fs, half_width_hz)


def _best_band(freqs: F64, sk: F64, fs: float, half_width_hz: float) -> tuple[F64, F64, F64]:
    smooth = sk.copy()
    smooth[:, 1:-1] = (sk[:, :-2] + sk[:, 1:-1] + sk[:, 2:]) / 3.0
    candidate = (freqs >= half_width_hz) & (freqs <= fs / 2 - half_width_hz)
    smooth[:, ~candidate] = -np.inf
    best = np.argmax(smooth, axis=1)
    centre = freqs[best]
    return centre - half_width_hz, centre + half_width_hz, smooth[np.arange(len(best)), best]


def envelope_spectrum(x: F64, fs: float, low_hz: F64, high_hz: F64) -> tuple[F64, F64]:
    """Amplitude spectrum of the Hilbert envelope of each frame, band-limited to its own band.

    Band-pass and Hilbert transform are one step: keep the positive-frequency bins of the band,
    double them and invert, which gives the analytic signal of the band-passed frame.
    """
    return _envelope(np.fft.fft(x, axis=1), fs, low_hz, high_hz)


def _envelope(
    spectrum: NDArray[np.complex128], fs: float, low_hz: F64, high_hz: F64
) -> tuple[F64, F64]:
    """``envelope_spectrum`` from the frames' full FFT (computed once for several bands)."""
    n = spectrum.shape[1]
    freqs = np.fft.fftfreq(n, 1.0 / fs)
    keep = (freqs[None, :] >= low_hz[:, None]) & (freqs[None, :] <= high_hz[:, None])
    envelope = np.abs(np.fft.ifft(np.where(keep, 2.0 * spectrum, 0.0), axis=1))
    envelope -= envelope.mean(axis=1, keepdims=True)
    amp = np.abs(np.fft.rfft(envelope * np.hanning(n), axis=1)) * (4.0 / n)
    return np.fft.rfftfreq(n, 1.0 / fs).astype(np.float64, copy=False), amp.astype(
        np.float64, copy=False
    )


def _level(freqs: F64, amp: F64, top_hz: F64) -> F64:
    """Each row's median envelope amplitude between 5 Hz and its ``top_hz`` (NaN if none)."""
    inside = (freqs[None, :] > 5.0) & (freqs[None, :] <= top_hz[:, None])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with no bin at all: NaN
        level = np.nanmedian(np.where(inside, amp, np.nan), axis=1)
    return np.where(level > 0, level, np.nan)


def defect_band_edges(fs: float) -> F64:
    """Edges (Hz) of the ``DEFECT_BANDS`` fixed demodulation bands at sample rate ``fs``.

    >>> defect_band_edges(12_000.0).round().tolist()
    [500.0, 2167.0, 3833.0, 5500.0]
    """
    nyquist = fs / 2.0
    return np.linspace(nyquist / 12.0, nyquist * 11.0 / 12.0, DEFECT_BANDS + 1)


def envelope_line_names() -> list[tuple[str, int]]:
    """(order, harmonic) of every envelope line read: 1-3x the defect orders, 1x the others."""
    return [
        (name, h)
        for name in ENVELOPE_ORDERS
        for h in range(1, (1 if name in ("ftf", "shaft") else HARMONICS) + 1)
    ]


def order_amplitudes(freqs: F64, amp: F64, line_hz: F64, tolerance: float = 0.02) -> F64:
    """Largest amplitude within ``±tolerance`` (relative) of ``line_hz`` (one line per frame).

    At least the nearest bin is always searched, so a line between bins is still found.
    """
    df = freqs[1] - freqs[0]
    half = np.maximum(tolerance * line_hz, df)
    window = np.abs(freqs[None, :] - line_hz[:, None]) <= half[:, None]
    return np.where(window, amp, -np.inf).max(axis=1)


def vibration_features(
    frames: NDArray[np.floating],
    fs: float,
    shaft_rpm: float | NDArray[np.floating],
    bearing: BearingGeometry,
) -> dict[str, F64]:
    """Every vibration feature of the registry, one value per frame (row of ``frames``).

    ``shaft_rpm`` is one speed or one per frame; a frame whose speed is missing, zero or not
    finite gets NaN for the speed-relative (envelope order) features and ``vib_speed_ok = 0``,
    never a number computed with a made-up speed.  NaN/inf samples or too-short frames are
    errors (the stream rejects such frames before this point).

    >>> from physics.bearing import SKF_6205
    >>> rng = np.random.default_rng(1)
    >>> f = vibration_features(rng.normal(size=(2, 4096)), 12_000.0, [1797.0, 0.0], SKF_6205)
    >>> f["vib_speed_ok"].tolist(), bool(np.isnan(f["env_bpfo_1"][1]))
    ([1.0, 0.0], True)
    """
    if not (np.isfinite(fs) and fs > 0):
        raise ValueError(f"sample rate must be a positive number of Hz, got {fs!r}")
    x = _frames(frames)
    rpm = np.broadcast_to(np.asarray(shaft_rpm, dtype=np.float64), (x.shape[0],))
    speed_ok = np.isfinite(rpm) & (rpm > 0)
    out = _time_domain(x)
    centred = x - x.mean(axis=1, keepdims=True)
    power = np.abs(np.fft.rfft(centred, axis=1)) ** 2
    bands = spectral_bands(power)
    for b in range(N_SPECTRAL_BANDS):
        out[f"vib_band_{b}"] = bands[:, b]
    sk_freqs, sk = spectral_kurtosis(centred, fs)
    low, high, sk_max = _best_band(sk_freqs, sk, fs, DEMOD_HALF_WIDTH_HZ)
    out["sk_max"] = sk_max
    out["demod_centre_hz"] = (low + high) / 2.0
    spectrum = np.fft.fft(centred, axis=1)
    freqs, amp = _envelope(spectrum, fs, low, high)
    shaft_hz = np.where(speed_ok, rpm, np.nan) / 60.0
    orders = defect_orders(bearing)
    per_order = {
        "bpfo": orders.bpfo,
        "bpfi": orders.bpfi,
        "bsf2": 2 * orders.bsf,
        "ftf": orders.ftf,
        "shaft": 1.0,
    }
    safe_shaft = np.where(speed_ok, shaft_hz, 1.0)
    # each frame's envelope level up to its own highest line (+20 %): never another frame's
    top_hz = np.maximum(HARMONICS * max(per_order.values()) * safe_shaft * 1.2, 50.0)
    floor = _level(freqs, amp, top_hz)
    lines = envelope_line_names()
    for name, h in lines:
        line = order_amplitudes(freqs, amp, h * per_order[name] * safe_shaft)
        out[f"env_{name}_{h}"] = np.where(speed_ok, line / floor, np.nan)
    out["vib_speed_ok"] = speed_ok.astype(np.float64)
    # the same lines in each fixed band, as logs of their ratio to the band's envelope level
    edges = defect_band_edges(fs)
    total = power[:, 1:].sum(axis=1)
    power_hz = np.fft.rfftfreq(x.shape[1], 1.0 / fs)
    with np.errstate(invalid="ignore", divide="ignore"):
        for b in range(DEFECT_BANDS):
            lo, hi = np.full(len(x), edges[b]), np.full(len(x), edges[b + 1])
            bf, ba = _envelope(spectrum, fs, lo, hi)
            level = _level(bf, ba, top_hz)
            for name, h in lines:
                line = order_amplitudes(bf, ba, h * per_order[name] * safe_shaft)
                ratio = np.log(np.maximum(line, 1e-300) / level)
                out[f"band{b}_env_{name}_{h}"] = np.where(speed_ok, ratio, np.nan)
            inside = (power_hz >= edges[b]) & (power_hz <= edges[b + 1])
            share = power[:, inside].sum(axis=1) / total
            out[f"band{b}_share"] = np.where(total > 0, np.log(np.maximum(share, 1e-300)), np.nan)
            out[f"band{b}_sk"] = sk[:, (sk_freqs >= edges[b]) & (sk_freqs <= edges[b + 1])].mean(
                axis=1
            )
    return out
