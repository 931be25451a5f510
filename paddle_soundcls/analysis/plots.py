"""Pictures of what a model found in a recording (matplotlib, which the `train` extra brings)."""
import numpy as np

from .. import audio, fileio

TOP_CLASSES = 5  # frame-score curves drawn: the classes with the highest scores
SILENCE_POWER = 1e-12  # the spectrogram's floor (-120 dB)


def plot_events(png_path, audio_path, result, labels, top=TOP_CLASSES):
    """A PNG of one recording: its spectrogram, the frame scores of its top classes over time,
    and the detected events as bars, on one time axis. `result` is one item of detect()."""
    try:
        from matplotlib import mlab
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f'--plot needs matplotlib ({exc}): pip install matplotlib', name='matplotlib') from None
    wave = audio.load(audio_path, None, 16000)  # enough bandwidth for a picture
    scores, hop = result['frame_scores'], result['frame_hop']
    events = result['events']
    order = np.argsort(-scores.max(axis=0))[:top] if len(scores) else []
    event_labels = sorted({e['label'] for e in events}, key=labels.index)
    duration = max(len(wave) / 16000, len(scores) * hop)

    figure = Figure(figsize=(12, 7), layout='constrained')
    FigureCanvasAgg(figure)
    spec_ax, score_ax, event_ax = figure.subplots(3, 1, sharex=True, height_ratios=[2, 2, 1 + 0.25 * len(event_labels)])
    power, freqs, times = mlab.specgram(wave if len(wave) > 512 else np.pad(wave, (0, 512)), NFFT=512, Fs=16000,
                                        noverlap=384)
    # Floored, so digital silence is drawn as the quietest colour (not left blank by log10(0)).
    decibels = 10 * np.log10(np.maximum(power, SILENCE_POWER))
    spec_ax.imshow(decibels, origin='lower', aspect='auto', cmap='magma', interpolation='nearest',
                   extent=(times[0] - (times[1] - times[0] if len(times) > 1 else 0.016) / 2,
                           times[-1] + (times[1] - times[0] if len(times) > 1 else 0.016) / 2, freqs[0], freqs[-1]),
                   vmin=max(decibels.max() - 100, 10 * np.log10(SILENCE_POWER)), vmax=decibels.max() + 1e-6)
    spec_ax.set_ylabel('Hz')
    spec_ax.set_title(audio_path)
    times = (np.arange(len(scores)) + 0.5) * hop
    for c in order:
        score_ax.plot(times, scores[:, c], label=labels[c], linewidth=1.2)
    score_ax.set_ylim(0, 1.02)
    score_ax.set_ylabel('score')
    if len(order):
        score_ax.legend(loc='upper right', fontsize=8)
    for row, label in enumerate(event_labels):
        spans = [(e['onset'], e['offset'] - e['onset']) for e in events if e['label'] == label]
        event_ax.broken_barh(spans, (row - 0.4, 0.8), color=f'C{row % 10}')
    event_ax.set_yticks(range(len(event_labels)), labels=event_labels, fontsize=8)
    event_ax.set_ylim(-0.6, max(len(event_labels), 1) - 0.4)
    if not event_labels:
        event_ax.text(duration / 2, 0, 'nothing detected', ha='center', va='center')
    event_ax.set_xlabel('seconds')
    event_ax.set_xlim(0, duration)
    fileio.atomic_write_file(png_path, lambda f: figure.savefig(f, format='png', dpi=100), 'wb')
    return png_path
