"""The ffmpeg wrappers that make a video's outputs, one module per kind of output.

- probe: what an upload holds (probe, ProbeResult) and which of its streams the steps use
  (picture_stream, sound_stream; first_streams: each step's one ffprobe);
- audio: the 16 kHz WAV that whisper reads (extract_audio);
- thumbnails: the poster and the storyboard (make_poster, make_storyboard);
- preview: the small web-playable MP4 (transcode_preview, audio_copyable);
- colours: JPEG's colours and HDR tone-mapping, which thumbnails and preview share.

Each raises ffrun.MediaError, whose message is one sentence for users, and reports progress
through an ffrun.ProgressCallback. ffmpeg opens the source as mediainput says
(mediainput.ffmpeg_input).
"""
