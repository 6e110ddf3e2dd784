-- Lixian (澧县) county's 4 subdistricts and 15 towns.
INSERT INTO towns (id, key, name_zh, name_en) VALUES
    (1,  'liyang',       '澧阳街道',  'Liyang'),
    (2,  'lipu',         '澧浦街道',  'Lipu'),
    (3,  'lixi',         '澧西街道',  'Lixi'),
    (4,  'lidan',        '澧澹街道',  'Lidan'),
    (5,  'xiaodukou',    '小渡口镇',  'Xiaodukou'),
    (6,  'mengxi',       '梦溪镇',    'Mengxi'),
    (7,  'fuxingchang',  '复兴厂镇',  'Fuxingchang'),
    (8,  'yanjing',      '盐井镇',    'Yanjing'),
    (9,  'wangjiachang', '王家厂镇',  'Wangjiachang'),
    (10, 'chengtoushan', '城头山镇',  'Chengtoushan'),
    (11, 'jinluo',       '金罗镇',    'Jinluo'),
    (12, 'matoupu',      '码头铺镇',  'Matoupu'),
    (13, 'cennan',       '涔南镇',    'Cennan'),
    (14, 'dayandang',    '大堰垱镇',  'Dayandang'),
    (15, 'ganxitan',     '甘溪滩镇',  'Ganxitan'),
    (16, 'huolianpo',    '火连坡镇',  'Huolianpo'),
    (17, 'rudong',       '如东镇',    'Rudong'),
    (18, 'guanyuan',     '官垸镇',    'Guanyuan'),
    (19, 'linan',        '澧南镇',    'Linan')
ON CONFLICT (id) DO NOTHING;
