--- spec/audio_helper.lua: measure audio in WAV files for specs (what was
-- recorded or heard), by frequency, never by file size.
local audio = {}


--- Samples (integers) and sample rate of a 16-bit mono PCM WAV file.
function audio.read_wav(path)
    local f = assert(io.open(path, "rb"), "no file " .. path)
    local s = f:read("a")
    f:close()
    assert(s:sub(1, 4) == "RIFF" and s:sub(9, 12) == "WAVE", path .. ": not a WAV file")
    local pos, rate, data = 13, nil, nil
    while pos + 7 <= #s do
        local id, len = s:sub(pos, pos + 3), string.unpack("<I4", s, pos + 4)
        if id == "fmt " then
            rate = string.unpack("<I4", s, pos + 12)
        elseif id == "data" then
            data = s:sub(pos + 8, pos + 7 + len)
            break
        end
        pos = pos + 8 + len
    end
    assert(rate and data, path .. ": no fmt or data chunk")
    local out = {}
    for i = 1, #data - 1, 2 do out[#out + 1] = string.unpack("<i2", data, i) end
    return out, rate
end


--- Share (0..1) of the energy of samples[from .. from+n-1] that lies at
-- freq (Goertzel): about 1 for a pure tone at freq, near 0 without it.
function audio.goertzel(samples, rate, from, n, freq)
    local w = 2 * math.pi * freq / rate
    local coeff = 2 * math.cos(w)
    local s1, s2, energy = 0.0, 0.0, 0.0
    for i = from, from + n - 1 do
        local x = samples[i]
        local s0 = x + coeff * s1 - s2
        s2, s1 = s1, s0
        energy = energy + x * x
    end
    if energy < n * 100 then return 0 end         -- silence (|x| < 10)
    local power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return power / (energy * n / 2)
end


--- Seconds of samples in 20 ms frames where freq carries more than
-- `share` (default 0.8) of the energy, and the index of the first one.
function audio.tone_seconds(samples, rate, freq, share)
    share = share or 0.8
    local n, frames, first = rate // 50, 0, nil
    for from = 1, #samples - n + 1, n do
        if audio.goertzel(samples, rate, from, n, freq) > share then
            frames = frames + 1
            first = first or from
        end
    end
    return frames * n / rate, first
end


--- Frequency of samples[from..to] from its zero crossings.
function audio.frequency(samples, rate, from, to)
    local n, prev = 0, samples[from]
    for i = from + 1, to do
        local v = samples[i]
        if (prev < 0 and v >= 0) or (prev >= 0 and v < 0) then n = n + 1 end
        prev = v
    end
    return n / 2 / ((to - from) / rate)
end


--- Duration in seconds of a WAV file.
function audio.duration(path)
    local samples, rate = audio.read_wav(path)
    return #samples / rate
end


return audio
