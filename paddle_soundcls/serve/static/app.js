'use strict';
// The page of `paddle-soundcls serve`: classify a file, a recording, or the microphone live.
// Plain browser APIs only (fetch, Web Audio, WebSocket): no build step, works offline.

const $ = (id) => document.getElementById(id);
const LIVE_WINDOW_SECONDS = 2.0;
const LIVE_HOP_SECONDS = 0.5;
const LIVE_CHUNK_SAMPLES = 4096;   // about 0.1 s per WebSocket message

function apiHeaders(extra) {
  const result = Object.assign({}, extra);
  const key = $('api-key').value.trim();
  if (key) result['X-API-Key'] = key;
  return result;
}

function topK() {
  const k = parseInt($('top-k').value, 10);
  return Number.isFinite(k) && k > 0 ? k : 5;
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

function showStatus(message) {
  $('status').textContent = message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error) return body.error.message;
    if (body.detail) return JSON.stringify(body.detail);
  } catch (err) {
    // not JSON: fall back to the status line
  }
  return `${response.status} ${response.statusText}`;
}

function showResults(results) {
  const list = $('results');
  list.replaceChildren();
  for (const {label, score} of results) {
    const item = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'label';
    name.textContent = label;
    name.title = label;
    const bar = document.createElement('div');
    bar.className = 'bar';
    const fill = document.createElement('div');
    fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
    bar.append(fill);
    const value = document.createElement('span');
    value.className = 'score';
    value.textContent = score.toFixed(3);
    item.append(name, bar, value);
    list.append(item);
  }
}

async function loadModel() {
  try {
    const response = await fetch('v1/model', {headers: apiHeaders()});
    if (!response.ok) {
      $('model').textContent = `Model description not available: ${await errorMessage(response)}`;
      return;
    }
    const model = await response.json();
    $('model').textContent = `${model.name}: ${model.labels.length} labels, ${model.sample_rate} Hz, ${model.precision}`;
  } catch (err) {
    $('model').textContent = `The server did not answer: ${err.message}`;
  }
}

async function classify(blob, name) {
  showError('');
  showStatus(`Classifying ${name}…`);
  // Browsers name some audio files video/ogg or leave the type empty: send those as plain bytes.
  const type = blob.type && blob.type.startsWith('audio/') ? blob.type : 'application/octet-stream';
  try {
    const response = await fetch(`v1/classify?top_k=${topK()}`, {
      method: 'POST', body: blob, headers: apiHeaders({'Content-Type': type}),
    });
    if (!response.ok) {
      showResults([]);
      showStatus('');
      showError(await errorMessage(response));
      return;
    }
    const body = await response.json();
    showResults(body.results);
    showStatus(`${name}: ${body.duration.toFixed(2)} s of audio, ${body.model}`);
    await showTimeline(blob, type, body.duration);
  } catch (err) {
    showStatus('');
    showError(`The server did not answer: ${err.message}`);
  }
}

// When each sound happens: /v1/events, drawn as one track per label on the clip's time axis.
async function showTimeline(blob, type, duration) {
  const area = $('timeline');
  area.replaceChildren();
  area.hidden = true;
  $('timeline-title').hidden = true;
  $('timeline-status').textContent = '';
  const response = await fetch('v1/events', {method: 'POST', body: blob, headers: apiHeaders({'Content-Type': type})});
  if (!response.ok) {
    return;  // a server without event detection: the labels above are the answer
  }
  const body = await response.json();
  $('timeline-title').hidden = false;
  if (!body.events.length) {
    $('timeline-status').textContent = 'Nothing detected: no sound reached its threshold.';
    return;
  }
  const labels = [...new Set(body.events.map((e) => e.label))];
  for (const label of labels) {
    const track = document.createElement('div');
    track.className = 'track';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = label;
    track.append(name);
    for (const event of body.events.filter((e) => e.label === label)) {
      const bar = document.createElement('div');
      bar.className = 'event';
      bar.style.left = `${(event.onset / duration) * 100}%`;
      bar.style.width = `${Math.max(0.5, ((event.offset - event.onset) / duration) * 100)}%`;
      bar.title = `${label}: ${event.onset.toFixed(2)}-${event.offset.toFixed(2)} s (${event.confidence.toFixed(2)})`;
      track.append(bar);
    }
    area.append(track);
  }
  const axis = document.createElement('div');
  axis.className = 'axis';
  for (const t of [0, duration / 2, duration]) {
    const tick = document.createElement('span');
    tick.textContent = `${t.toFixed(1)} s`;
    axis.append(tick);
  }
  area.append(axis);
  area.hidden = false;
  $('timeline-status').textContent = `${body.events.length} events`;
}

// Microphone ---------------------------------------------------------------------------

async function openMicrophone(onSamples) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false},
  });
  const context = new AudioContext();
  await context.audioWorklet.addModule('static/recorder-worklet.js');
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, 'recorder');
  node.port.onmessage = (event) => onSamples(event.data);
  source.connect(node);
  node.connect(context.destination);   // silent (the worklet writes nothing), but keeps it running
  return {
    sampleRate: context.sampleRate,
    close() {
      source.disconnect();
      node.disconnect();
      stream.getTracks().forEach((track) => track.stop());
      context.close();
    },
  };
}

function joinSamples(chunks) {
  const total = chunks.reduce((n, chunk) => n + chunk.length, 0);
  const samples = new Float32Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    samples.set(chunk, offset);
    offset += chunk.length;
  }
  return samples;
}

function encodeWav(samples, sampleRate) {
  // 16-bit PCM mono: RIFF header (44 bytes) + samples.
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, 'WAVE');
  text(12, 'fmt ');
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true);              // PCM
  view.setUint16(22, 1, true);              // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true); // bytes per second
  view.setUint16(32, 2, true);              // bytes per frame
  view.setUint16(34, 16, true);             // bits per sample
  text(36, 'data');
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return new Blob([view], {type: 'audio/wav'});
}

let recorder = null;   // {microphone, chunks} while recording
let live = null;       // {microphone, socket} while listening live

function setBusy(button, busy, idleText, busyText) {
  button.textContent = busy ? busyText : idleText;
  button.setAttribute('aria-pressed', String(busy));
}

async function toggleRecording() {
  const button = $('record');
  if (recorder) {
    const {microphone, chunks} = recorder;
    recorder = null;
    microphone.close();
    setBusy(button, false, 'Record', 'Stop');
    $('live').disabled = false;
    $('mic-status').textContent = '';
    await classify(encodeWav(joinSamples(chunks), microphone.sampleRate), 'the recording');
    return;
  }
  showError('');
  try {
    const chunks = [];
    recorder = {microphone: await openMicrophone((samples) => chunks.push(samples)), chunks};
  } catch (err) {
    recorder = null;
    showError(`No microphone: ${err.message}`);
    return;
  }
  setBusy(button, true, 'Record', 'Stop');
  $('live').disabled = true;
  $('mic-status').textContent = 'Recording… press Stop to classify.';
}

function stopLive(message) {
  if (!live) return;
  const {microphone, socket} = live;
  live = null;
  microphone.close();
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: 'end'}));
  setBusy($('live'), false, 'Listen live', 'Stop listening');
  $('record').disabled = false;
  $('mic-status').textContent = message || '';
}

async function toggleLive() {
  if (live) {
    stopLive();
    return;
  }
  showError('');
  let microphone;
  let pending = [];
  let pendingLength = 0;
  let ready = false;
  const url = new URL('v1/stream', window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  try {
    microphone = await openMicrophone((samples) => {
      if (!ready || socket.readyState !== WebSocket.OPEN) return;
      pending.push(samples);
      pendingLength += samples.length;
      if (pendingLength >= LIVE_CHUNK_SAMPLES) {
        socket.send(joinSamples(pending).buffer);
        pending = [];
        pendingLength = 0;
      }
    });
  } catch (err) {
    socket.close();
    showError(`No microphone: ${err.message}`);
    return;
  }
  live = {microphone, socket};
  setBusy($('live'), true, 'Listen live', 'Stop listening');
  $('record').disabled = true;
  socket.onopen = () => {
    const start = {sample_rate: microphone.sampleRate, format: 'float32', window: LIVE_WINDOW_SECONDS,
                   hop: LIVE_HOP_SECONDS, top_k: topK()};
    const key = $('api-key').value.trim();
    if (key) start.api_key = key;
    socket.send(JSON.stringify(start));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === 'ready') {
      ready = true;
      $('mic-status').textContent = 'Listening…';
    } else if (message.type === 'scores') {
      showResults(message.results);
      showStatus(`Live: ${message.start.toFixed(1)}–${message.end.toFixed(1)} s`);
    } else if (message.type === 'error') {
      showError(message.error.message);
    }
  };
  socket.onclose = () => stopLive('Stopped.');
  socket.onerror = () => showError('The live connection failed.');
}

$('file').addEventListener('change', () => {
  const file = $('file').files[0];
  if (!file) return;
  $('file-name').textContent = file.name;
  classify(file, file.name);
});
$('record').addEventListener('click', toggleRecording);
$('live').addEventListener('click', toggleLive);
$('api-key').addEventListener('change', loadModel);
if (!navigator.mediaDevices || !window.AudioWorkletNode) {
  $('record').disabled = true;
  $('live').disabled = true;
  $('mic-status').textContent = 'The microphone needs a secure page (https, or this machine as localhost).';
}
loadModel();
